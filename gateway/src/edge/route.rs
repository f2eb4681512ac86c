//! Host + path (+ method, headers) → route. Pure, no I/O.
//!
//! The router is compiled once per config: exact hosts and wildcard suffixes are hash lookups, so the
//! cost of a lookup does not grow with the number of tenants; only regex hosts are scanned.
//!
//! Ranking, highest first: explicit `priority` (missing = 0), then host specificity (exact > wildcard >
//! regex > any host), then the longest `path_prefix`, then routes that name `methods`, then more header
//! matchers, then file order. Config validation refuses routes that only file order would separate.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

use http::{HeaderMap, Method};
use regex::Regex;

use crate::config::{is_label, HostPattern, RouteSpec, Tenancy};

/// What a request offers to the matchers.
pub struct RequestView<'a> {
    /// Normalised host: lowercase, no port, no trailing dot.
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The chosen route and the tenant the host names, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub route: usize,
    pub tenant: Option<Cow<'a, str>>,
}

/// A route's place in the ranking; greater wins.
pub type Rank = (i64, u8, usize, bool, usize, Reverse<usize>);

/// Everything but the host that a route matches on.
#[derive(Debug, Clone)]
struct Matcher {
    prefix: String,
    methods: Option<Vec<Method>>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Matcher {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        path_matches(&self.prefix, req.path)
            && self.methods.as_ref().is_none_or(|m| m.contains(req.method))
            && self
                .headers
                .iter()
                .all(|(n, v)| req.headers.get_all(n).iter().any(|x| x == v))
    }
}

/// `prefix` matches whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<(usize, Option<String>)>>,
    wildcard: HashMap<String, Vec<usize>>,
    regex: Vec<(Regex, usize)>,
    any: Vec<usize>,
    matchers: Vec<Matcher>,
    ranks: Vec<Rank>,
    reserved: std::collections::HashSet<String>,
    has_priorities: bool,
}

/// The rank of a route for one of its host patterns (`kind`: 3 exact, 2 wildcard, 1 regex, 0 any).
pub fn rank(spec: &RouteSpec, kind: u8, index: usize) -> Rank {
    (
        spec.priority.unwrap_or(0),
        kind,
        spec.path_prefix.len(),
        spec.methods.is_some(),
        spec.headers.len(),
        Reverse(index),
    )
}

impl Router {
    /// Compiles `routes` (indexes into the slice are the route ids).
    pub fn new(routes: &[RouteSpec], tenancy: &Tenancy) -> Router {
        let mut r = Router {
            reserved: tenancy.reserved.clone(),
            has_priorities: routes.iter().any(|s| s.priority.is_some()),
            ..Router::default()
        };
        let mut regex: Vec<(Regex, usize, Rank)> = Vec::new();
        for (i, spec) in routes.iter().enumerate() {
            r.matchers.push(Matcher {
                prefix: spec.path_prefix.clone(),
                methods: spec.methods.clone(),
                headers: spec.headers.clone(),
            });
            // The kind is left 0 here: each lookup sets it for the host kind that matched (`rank_as`).
            r.ranks.push(rank(spec, 0, i));
            if spec.hosts.is_empty() {
                r.any.push(i);
            }
            for h in &spec.hosts {
                match h {
                    HostPattern::Exact { host, tenant } => r
                        .exact
                        .entry(host.clone())
                        .or_default()
                        .push((i, tenant.clone())),
                    HostPattern::Wildcard { suffix } => {
                        r.wildcard.entry(suffix.clone()).or_default().push(i)
                    }
                    HostPattern::Regex { regex: re } => {
                        regex.push((re.clone(), i, rank(spec, 1, i)))
                    }
                }
            }
        }
        let by_rank = |kind: u8| move |i: &usize| Reverse(rank(&routes[*i], kind, *i));
        for list in r.exact.values_mut() {
            list.sort_by_key(|(i, _)| Reverse(rank(&routes[*i], 3, *i)));
        }
        for list in r.wildcard.values_mut() {
            list.sort_by_key(by_rank(2));
        }
        r.any.sort_by_key(by_rank(0));
        regex.sort_by_key(|(_, _, rk)| Reverse(*rk));
        r.regex = regex.into_iter().map(|(re, i, _)| (re, i)).collect();
        r
    }

    /// The best route for `req`, or `None` (404).
    pub fn lookup<'a>(&'a self, req: &RequestView<'a>) -> Option<RouteMatch<'a>> {
        let host = req.host;
        let mut best: Option<(Rank, RouteMatch<'a>)> = None;
        let consider =
            |rank: Rank, m: RouteMatch<'a>, best: &mut Option<(Rank, RouteMatch<'a>)>| {
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    *best = Some((rank, m));
                }
            };

        if let Some(list) = self.exact.get(host) {
            if let Some((i, tenant)) = list.iter().find(|(i, _)| self.matchers[*i].matches(req)) {
                let m = RouteMatch {
                    route: *i,
                    tenant: tenant.as_deref().map(Cow::Borrowed),
                };
                if !self.has_priorities {
                    return Some(m);
                }
                consider(self.rank_as(*i, 3), m, &mut best);
            }
        }
        if let Some((label, suffix)) = host.split_once('.') {
            if let Some(list) = self.wildcard.get(suffix) {
                if is_label(label) {
                    if let Some(i) = list.iter().find(|i| self.matchers[**i].matches(req)) {
                        let tenant =
                            (!self.reserved.contains(label)).then_some(Cow::Borrowed(label));
                        let m = RouteMatch { route: *i, tenant };
                        if !self.has_priorities && best.is_none() {
                            return Some(m);
                        }
                        consider(self.rank_as(*i, 2), m, &mut best);
                    }
                }
            }
        }
        if best.is_none() || self.has_priorities {
            for (re, i) in &self.regex {
                if !self.matchers[*i].matches(req) {
                    continue;
                }
                if let Some(caps) = re.captures(host) {
                    let tenant = caps.name("tenant").map(|t| Cow::Borrowed(t.as_str()));
                    consider(
                        self.rank_as(*i, 1),
                        RouteMatch { route: *i, tenant },
                        &mut best,
                    );
                    break;
                }
            }
        }
        if best.is_none() || self.has_priorities {
            if let Some(i) = self.any.iter().find(|i| self.matchers[**i].matches(req)) {
                consider(
                    self.rank_as(*i, 0),
                    RouteMatch {
                        route: *i,
                        tenant: None,
                    },
                    &mut best,
                );
            }
        }
        best.map(|(_, m)| m)
    }

    fn rank_as(&self, i: usize, kind: u8) -> Rank {
        let mut r = self.ranks[i];
        r.1 = kind;
        r
    }
}

/// Normalises a Host header or `:authority`: lowercase, port and trailing dot removed.
/// Returns `None` when it is not a valid host (the request then gets 400).
pub fn normalize_host(raw: &[u8]) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    let host = if let Some(rest) = s.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']')?;
        let (lit, after) = (&rest[..end], &rest[end + 1..]);
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        lit.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(Cow::Owned(format!("[{}]", lit.to_ascii_lowercase())));
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if valid_port(port) => h,
            Some(_) => return None,
            None => s,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;
    use proptest::prelude::*;

    fn tenancy() -> Tenancy {
        Tenancy {
            base_domains: vec!["aggios.app".into()],
            reserved: ["api".to_string(), "www".to_string()].into_iter().collect(),
        }
    }

    fn spec(name: &str, hosts: &[&str], prefix: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| parse_host_pattern(h, &tenancy()).expect("valid host"))
                .collect(),
            path_prefix: prefix.into(),
            methods: None,
            headers: vec![],
            priority: None,
            upstream: Some("u".into()),
            strip_prefix: false,
            redirect_https: false,
            max_body_bytes: 1,
            timeouts: Default::default(),
            request_headers: Default::default(),
            response_headers: Default::default(),
            auth: crate::config::AuthPolicy::None,
            cors: None,
            scopes: Vec::new(),
            ip_access: Default::default(),
            compression: None,
            rate_limits: Vec::new(),
            quota: false,
            on_store_error: crate::config::OnStoreError::Open,
            security: Default::default(),
            canary: None,
            client_auth: None,
            grpc_web: false,
        }
    }

    fn find<'a>(
        r: &'a Router,
        host: &'a str,
        path: &'a str,
        method: &'a Method,
        headers: &'a HeaderMap,
    ) -> Option<RouteMatch<'a>> {
        r.lookup(&RequestView {
            host,
            path,
            method,
            headers,
        })
    }

    #[test]
    fn exact_beats_wildcard_beats_regex_then_longest_prefix() {
        let routes = vec![
            spec("wild", &["*.aggios.app"], "/"),
            spec("wild-api", &["*.aggios.app"], "/api"),
            spec("exact", &["acme.aggios.app"], "/"),
            spec("re", &["~^(?P<tenant>[a-z]+)\\.aggios\\.app$"], "/api/v2"),
            spec("any", &[], "/"),
        ];
        let r = Router::new(&routes, &tenancy());
        let h = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(
            find(&r, "acme.aggios.app", "/api", &get, &h).map(|m| m.route),
            Some(2)
        );
        let m = find(&r, "globex.aggios.app", "/api/x", &get, &h).expect("match");
        assert_eq!((m.route, m.tenant.as_deref()), (1, Some("globex")));
        assert_eq!(
            find(&r, "globex.aggios.app", "/apix", &get, &h).map(|m| m.route),
            Some(0)
        );
        assert_eq!(
            find(&r, "api.aggios.app", "/", &get, &h).map(|m| (m.route, m.tenant)),
            Some((0, None))
        );
        assert_eq!(
            find(&r, "a.b.aggios.app", "/", &get, &h).map(|m| m.route),
            Some(4)
        );
        assert_eq!(
            find(&r, "other.example", "/", &get, &h).map(|m| m.route),
            Some(4)
        );
    }

    #[test]
    fn explicit_priority_overrides_specificity() {
        let mut low = spec("exact", &["acme.aggios.app"], "/");
        low.priority = Some(1);
        let mut high = spec("wild", &["*.aggios.app"], "/");
        high.priority = Some(10);
        let r = Router::new(&[low, high], &tenancy());
        let h = HeaderMap::new();
        assert_eq!(
            find(&r, "acme.aggios.app", "/", &Method::GET, &h).map(|m| m.route),
            Some(1)
        );
    }

    /// With equal priorities the host kind decides across kinds (exact over wildcard over regex), before
    /// the path prefix and the order in the file: the wildcard and regex routes come first and have the
    /// longer prefix, and still lose.
    #[test]
    fn equal_priorities_rank_exact_then_wildcard_then_regex() {
        let mut re = spec("re", &["~^(?P<tenant>[a-z]+)\\.aggios\\.app$"], "/api");
        let mut wild = spec("wild", &["*.aggios.app"], "/api");
        let mut exact = spec("exact", &["acme.aggios.app"], "/");
        for s in [&mut re, &mut wild, &mut exact] {
            s.priority = Some(5);
        }
        let h = HeaderMap::new();
        let get = Method::GET;
        let r = Router::new(&[re.clone(), wild.clone(), exact], &tenancy());
        assert_eq!(
            find(&r, "acme.aggios.app", "/api", &get, &h).map(|m| m.route),
            Some(2)
        );
        assert_eq!(
            find(&r, "globex.aggios.app", "/api", &get, &h).map(|m| m.route),
            Some(1)
        );
        let r = Router::new(&[re], &tenancy());
        assert_eq!(
            find(&r, "globex.aggios.app", "/api", &get, &h).map(|m| m.route),
            Some(0)
        );
    }

    /// A header matcher matches the request carrying that value (among others), not another value.
    #[test]
    fn header_matchers_want_the_value() {
        let mut canary = spec("canary", &["*.aggios.app"], "/");
        canary.headers = vec![(
            http::HeaderName::from_static("x-env"),
            http::HeaderValue::from_static("canary"),
        )];
        let r = Router::new(&[canary, spec("main", &["*.aggios.app"], "/")], &tenancy());
        let get = Method::GET;
        let mut h = HeaderMap::new();
        assert_eq!(
            find(&r, "acme.aggios.app", "/", &get, &h).map(|m| m.route),
            Some(1)
        );
        h.insert("x-env", "prod".parse().expect("hv"));
        assert_eq!(
            find(&r, "acme.aggios.app", "/", &get, &h).map(|m| m.route),
            Some(1)
        );
        h.append("x-env", "canary".parse().expect("hv"));
        assert_eq!(
            find(&r, "acme.aggios.app", "/", &get, &h).map(|m| m.route),
            Some(0)
        );
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalize_host(b"ACME.Aggios.app:8080").as_deref(),
            Some("acme.aggios.app")
        );
        assert_eq!(
            normalize_host(b"acme.aggios.app.").as_deref(),
            Some("acme.aggios.app")
        );
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("[::1]"));
        for bad in [
            &b""[..],
            b"a b",
            b"x:99999",
            b"x:",
            b"a..b",
            b"\xff",
            b"evil.com/x",
            b"a@b",
        ] {
            assert_eq!(
                normalize_host(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A host name of 253 characters (a trailing dot aside) is read; one of 254 is not.
    #[test]
    fn host_names_up_to_253_characters() {
        let l = |c: &str, n: usize| c.repeat(n);
        let host = format!(
            "{}.{}.{}.{}",
            l("a", 63),
            l("b", 63),
            l("c", 63),
            l("d", 61)
        );
        assert_eq!(host.len(), 253);
        assert_eq!(
            normalize_host(host.as_bytes()).as_deref(),
            Some(host.as_str())
        );
        let dotted = format!("{host}.");
        assert_eq!(
            normalize_host(dotted.as_bytes()).as_deref(),
            Some(host.as_str())
        );
        let long = format!("{host}d");
        assert_eq!(normalize_host(long.as_bytes()), None);
        // Hyphens and underscores inside labels are letters like any other.
        assert_eq!(
            normalize_host(b"a-b_c.aggios.app").as_deref(),
            Some("a-b_c.aggios.app")
        );
    }

    /// The slow reference: every route, every host pattern, highest rank wins.
    fn reference(
        routes: &[RouteSpec],
        tenancy: &Tenancy,
        req: &RequestView<'_>,
    ) -> Option<(usize, Option<String>)> {
        let mut best: Option<(Rank, usize, Option<String>)> = None;
        for (i, s) in routes.iter().enumerate() {
            let m = Matcher {
                prefix: s.path_prefix.clone(),
                methods: s.methods.clone(),
                headers: s.headers.clone(),
            };
            if !m.matches(req) {
                continue;
            }
            let mut cands: Vec<(u8, Option<String>)> = vec![];
            if s.hosts.is_empty() {
                cands.push((0, None));
            }
            for h in &s.hosts {
                match h {
                    HostPattern::Exact { host, tenant } if host == req.host => {
                        cands.push((3, tenant.clone()))
                    }
                    HostPattern::Wildcard { suffix } => {
                        if let Some((label, rest)) = req.host.split_once('.') {
                            if rest == suffix && is_label(label) {
                                cands.push((
                                    2,
                                    (!tenancy.reserved.contains(label)).then(|| label.to_string()),
                                ));
                            }
                        }
                    }
                    HostPattern::Regex { regex } => {
                        if let Some(c) = regex.captures(req.host) {
                            cands.push((1, c.name("tenant").map(|t| t.as_str().to_string())));
                        }
                    }
                    _ => {}
                }
            }
            for (kind, tenant) in cands {
                let rk = rank(s, kind, i);
                if best.as_ref().is_none_or(|(b, _, _)| rk > *b) {
                    best = Some((rk, i, tenant));
                }
            }
        }
        best.map(|(_, i, t)| (i, t))
    }

    fn arb_route() -> impl Strategy<Value = (Vec<usize>, usize, Option<i64>, Option<Vec<usize>>)> {
        (
            proptest::collection::vec(0usize..6, 0..3),
            0usize..4,
            proptest::option::weighted(0.3, -2i64..3),
            proptest::option::weighted(0.3, proptest::collection::vec(0usize..3, 1..3)),
        )
    }

    const HOSTS: [&str; 6] = [
        "acme.aggios.app",
        "api.aggios.app",
        "*.aggios.app",
        "*.x.app",
        "~^(?P<tenant>[a-z]+)\\.x\\.app$",
        "~^.*\\.aggios\\.app$",
    ];
    const PREFIXES: [&str; 4] = ["/", "/api", "/api/v1", "/b"];
    const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::DELETE];

    proptest! {
        #[test]
        fn router_agrees_with_reference(
            routes in proptest::collection::vec(arb_route(), 1..12),
            host in prop::sample::select(vec!["acme.aggios.app", "api.aggios.app", "globex.aggios.app", "a.b.aggios.app", "t1.x.app", "x.app", "other.io"]),
            path in prop::sample::select(vec!["/", "/api", "/api/v1/z", "/apix", "/b/c"]),
            method in 0usize..3,
        ) {
            let t = tenancy();
            let specs: Vec<RouteSpec> = routes.iter().enumerate().map(|(i, (hosts, prefix, prio, methods))| {
                let hs: Vec<&str> = hosts.iter().map(|h| HOSTS[*h]).collect();
                let mut s = spec(&format!("r{i}"), &hs, PREFIXES[*prefix]);
                s.priority = *prio;
                s.methods = methods.as_ref().map(|ms| ms.iter().map(|m| METHODS[*m].clone()).collect());
                s
            }).collect();
            let router = Router::new(&specs, &t);
            let headers = HeaderMap::new();
            let req = RequestView { host, path, method: &METHODS[method], headers: &headers };
            let got = router.lookup(&req).map(|m| (m.route, m.tenant.map(|t| t.into_owned())));
            let want = reference(&specs, &t, &req);
            prop_assert_eq!(got, want);
        }
    }
}
