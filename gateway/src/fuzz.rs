//! Fuzz targets: what each parser must hold for any input, beyond "does not panic". The cargo-fuzz
//! binaries in `fuzz/` call these, and `tests/fuzz_corpora.rs` replays the committed corpora through them
//! in every test run. A target panics when its property breaks.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use crate::config::{CorsSpec, OriginPattern};
use crate::edge::auth::{self, api_key};
use crate::edge::{cors, guard, route};

/// Input bytes read as small choices.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<'t, T>(&mut self, from: &'t [T]) -> &'t T {
        &from[self.byte() as usize % from.len()]
    }

    fn rest(&self) -> &[u8] {
        self.0
    }
}

/// The config parser and validator: any text is a config or a list of `file:line:col: message` errors.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // libFuzzer's panic hook aborts even on a panic that is caught; the config parser catches the known
    // panics of the TOML parser crates (see `config::guarded`), so only those are let through here.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_toml_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/toml_edit-") || l.file().contains("/toml-"));
            if !in_toml_parser {
                fuzzer_hook(info);
            }
        }));
    });
    match crate::config::Config::parse(Path::new("fuzz.toml"), text) {
        Ok(c) => {
            let _ = c.summary();
        }
        Err(crate::config::ConfigError::Invalid(lines)) => {
            assert!(!lines.is_empty(), "an error without a message");
            let max_line = text.matches('\n').count() + 1;
            for l in &lines {
                let rest = l
                    .strip_prefix("fuzz.toml:")
                    .unwrap_or_else(|| panic!("no file name: {l}"));
                let mut it = rest.splitn(3, ':');
                let line: usize = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no line: {l}"));
                let col: usize = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no column: {l}"));
                assert!(
                    line >= 1 && line <= max_line && col >= 1,
                    "position out of the file: {l}"
                );
                assert!(it.next().is_some_and(|m| m.len() > 1), "no message: {l}");
            }
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

const HOST_PATTERNS: &[&str] = &[
    "api.aggios.app",
    "acme.aggios.app",
    "*.aggios.app",
    "*.x.app",
    "~^(?P<tenant>[a-z]+)\\.r\\.app$",
    "~^api\\.",
    "aggios.app",
];
const PREFIXES: &[&str] = &["/", "/api", "/api/", "/api/v1", "/apix", "/static", "/a/b"];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const HOSTS: &[&str] = &[
    "api.aggios.app",
    "acme.aggios.app",
    "www.aggios.app",
    "a.b.aggios.app",
    "aggios.app",
    "api.x.app",
    "zed.r.app",
    "api.r.app",
    "-x.aggios.app",
    "other.test",
];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/v1/x",
    "/apix",
    "/static/a",
    "/a/b/c",
    "/a",
];

/// Host patterns compiled once by the real config code (one route each), and the tenancy they were
/// compiled under; the router target builds its routes from these without parsing per input.
struct RouterPool {
    patterns: Vec<crate::config::HostPattern>,
    template: crate::config::RouteSpec,
    tenancy: crate::config::Tenancy,
}

fn router_pool() -> &'static RouterPool {
    static POOL: std::sync::OnceLock<RouterPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut toml = String::from(
            "[entrypoints]\nhttp = \"127.0.0.1:8080\"\n\n[tenancy]\nbase_domains = [\"aggios.app\", \"x.app\"]\nreserved = [\"api\", \"www\"]\n\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"template\"\nupstream = \"u\"\n",
        );
        for (i, h) in HOST_PATTERNS.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[routes]]\nname = \"h{i}\"\nhosts = [{h:?}]\nupstream = \"u\"\n"
            ));
        }
        let cfg = crate::config::Config::parse(Path::new("pool.toml"), &toml)
            .unwrap_or_else(|e| panic!("the router pool config: {e}"));
        RouterPool {
            patterns: cfg.routes[1..].iter().map(|r| r.hosts[0].clone()).collect(),
            template: cfg.routes[0].clone(),
            tenancy: cfg.tenancy.clone(),
        }
    })
}

/// The router against a naive reference: every route tried in turn, the best by the documented order
/// (priority, then host kind exact > wildcard > regex > none, then longer path prefix, then methods,
/// then headers, then the first declared), and the tenant the matching host pattern names.
pub fn router(data: &[u8]) {
    let pool = router_pool();
    let mut c = Choices(data);
    let n = 1 + c.byte() as usize % 6;
    let mut routes = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = pool.template.clone();
        r.name = format!("r{i}");
        let hosts = c.byte() % 4;
        for _ in 0..hosts {
            let p = c.pick(&pool.patterns).clone();
            if !r.hosts.iter().any(|h| h.source() == p.source()) {
                r.hosts.push(p);
            }
        }
        r.path_prefix = c.pick(PREFIXES).to_string();
        if c.byte() % 3 == 0 {
            r.methods = Some(vec![c.pick(METHODS).parse().unwrap_or(http::Method::GET)]);
        }
        if c.byte() % 4 == 0 {
            r.priority = Some(i64::from(c.byte() % 3));
        }
        routes.push(r);
    }
    let router = route::Router::new(&routes, &pool.tenancy);
    let host = *c.pick(HOSTS);
    let path = *c.pick(PATHS);
    let method: http::Method = c.pick(METHODS).parse().unwrap_or(http::Method::GET);
    let headers = http::HeaderMap::new();
    let view = route::RequestView {
        host,
        path,
        method: &method,
        headers: &headers,
    };
    let got = router
        .lookup(&view)
        .map(|m| (m.route, m.tenant.map(Cow::into_owned)));
    let want = reference_route(&routes, &pool.tenancy, host, path, &method);
    assert_eq!(got, want, "host {host} path {path} {method}\n{routes:#?}");
}

fn reference_route(
    routes: &[crate::config::RouteSpec],
    tenancy: &crate::config::Tenancy,
    host: &str,
    path: &str,
    method: &http::Method,
) -> Option<(usize, Option<String>)> {
    use crate::config::HostPattern;
    let reserved: &HashSet<String> = &tenancy.reserved;
    let mut best: Option<(route::Rank, usize, Option<String>)> = None;
    for (i, r) in routes.iter().enumerate() {
        // Whole segments: `/api` takes `/api` and `/api/x`, not `/apix`; `/api/` takes `/api/x`.
        let p = r.path_prefix.as_str();
        let prefix_ok = p == "/"
            || path == p
            || path.starts_with(p) && (p.ends_with('/') || path[p.len()..].starts_with('/'));
        if !prefix_ok || r.methods.as_ref().is_some_and(|m| !m.contains(method)) {
            continue;
        }
        let mut candidates: Vec<(u8, Option<String>)> = Vec::new();
        if r.hosts.is_empty() {
            candidates.push((0, None));
        }
        for h in &r.hosts {
            match h {
                HostPattern::Exact { host: e, tenant } if e == host => {
                    candidates.push((3, tenant.clone()))
                }
                HostPattern::Wildcard { suffix } => {
                    if let Some(label) = host
                        .strip_suffix(suffix.as_str())
                        .and_then(|l| l.strip_suffix('.'))
                    {
                        let label_ok = !label.is_empty()
                            && !label.contains('.')
                            && crate::config::is_label(label);
                        if label_ok {
                            let tenant = (!reserved.contains(label)).then(|| label.to_string());
                            candidates.push((2, tenant));
                        }
                    }
                }
                HostPattern::Regex { regex } => {
                    if let Some(caps) = regex.captures(host) {
                        candidates.push((1, caps.name("tenant").map(|t| t.as_str().to_string())));
                    }
                }
                _ => {}
            }
        }
        for (kind, tenant) in candidates {
            let rank = (
                r.priority.unwrap_or(0),
                kind,
                r.path_prefix.len(),
                r.methods.is_some(),
                r.headers.len(),
                std::cmp::Reverse(i),
            );
            if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                best = Some((rank, i, tenant));
            }
        }
    }
    best.map(|(_, i, t)| (i, t))
}

/// What the strict HTTP/1 head check (the fuzz target's limits) makes of `data`: `None` when it
/// refuses the head, else its framing (the Content-Length, chunked). For the differential test against
/// an independent parser (`tests/head_differential.rs`, Python's h11).
pub fn http_head_framing(data: &[u8]) -> Option<(Option<u64>, bool)> {
    let limits = guard::HeadLimits {
        max_header_bytes: 8192,
        max_headers: 64,
    };
    guard::check_head(data, limits)
        .ok()
        .map(|f| (f.content_length, f.chunked))
}

/// The strict HTTP/1 head check: when it accepts a head that httparse also parses, both agree on the
/// framing (one Host, the Content-Length value, chunked or not), so the edge and Pingora read one request.
pub fn http_head(data: &[u8]) {
    let limits = guard::HeadLimits {
        max_header_bytes: 8192,
        max_headers: 64,
    };
    let Ok(facts) = guard::check_head(data, limits) else {
        return;
    };
    assert!(
        facts.content_length.is_none() || !facts.chunked,
        "both framings accepted"
    );
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    assert_eq!(
        len,
        data.len(),
        "bytes after the head were accepted as part of it"
    );
    let values = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let cl = values("content-length");
    match facts.content_length {
        Some(n) => assert_eq!(cl.len(), 1, "Content-Length {n} from {cl:?}"),
        None => assert!(cl.is_empty(), "a Content-Length was ignored: {cl:?}"),
    }
    if let (Some(n), Some(v)) = (facts.content_length, cl.first()) {
        let parsed = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        assert_eq!(parsed, Some(n));
    }
    let te = values("transfer-encoding");
    assert_eq!(facts.chunked, !te.is_empty(), "Transfer-Encoding {te:?}");
    if req.version == Some(1) {
        assert_eq!(values("host").len(), 1, "HTTP/1.1 with other than one Host");
    }
}

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

/// The JWT verifier. Mode 0: the input is a token, which can only be refused (no one can sign without
/// the key). Mode 1: the input is a header and a claims set, signed here with the key; whatever passes
/// carries exactly the tenant and user of its claims and is not expired.
pub fn jwt(data: &[u8]) {
    use base64::Engine;
    let settings = crate::config::JwtSettings {
        keys: vec![crate::config::JwtKey {
            kid: Some("k1".into()),
            secret: SECRET.to_vec(),
        }],
        jwks: None,
        tenant_claim: "tenant_id".into(),
        leeway: std::time::Duration::from_secs(30),
        issuer: None,
        audience: None,
        max_token_bytes: 8192,
    };
    let v = auth::JwtVerifier::new(&settings, None);
    let mut c = Choices(data);
    let mode = c.byte() % 2;
    let rest = c.rest();
    if mode == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            assert!(
                v.verify(token).is_err(),
                "an unsigned token passed: {token}"
            );
        }
        return;
    }
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let Ok(sig) =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    else {
        return;
    };
    let token = format!("{message}.{sig}");
    if let Ok(id) = v.verify(&token) {
        let c: serde_json::Value =
            serde_json::from_slice(claims).expect("claims that passed are JSON");
        assert_eq!(c["tenant_id"].as_str(), Some(id.tenant.as_str()));
        assert_eq!(c["user_id"].as_str(), Some(id.user_id.as_str()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let exp = c["exp"]
            .as_u64()
            .expect("a token that passed has a numeric exp");
        assert!(exp + 30 >= now, "an expired token passed");
        let h: serde_json::Value = serde_json::from_slice(header).expect("header JSON");
        assert_eq!(h["alg"], "HS256");
    }
}

/// API-key parsing and checking: only `ak_{8 hex}_{56 hex}` parses, its prefix is its first part, and
/// only the exact key matches its record.
pub fn api_key(data: &[u8]) {
    use sha2::Digest;
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(prefix) = api_key::parse(s) {
        let hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(s.len() == 3 + 8 + 1 + 56 && s.starts_with("ak_") && &s[11..12] == "_");
        assert_eq!(prefix, &s[3..11]);
        assert!(hex(prefix) && hex(&s[12..]));
    }
    const KEY: &str = "ak_0123abcd_00112233445566778899aabbccddeeff00112233445566778899aabb";
    let rec = api_key::KeyRecord {
        id: "k".into(),
        tenant: "acme".into(),
        key_sha256: hex::encode(sha2::Sha256::digest(KEY.as_bytes())),
        scopes: vec![],
        expires_at: None,
    };
    assert_eq!(api_key::check(s, &rec).is_ok(), s == KEY, "{s}");
}

/// CORS origin matching against a strict reference: an origin is `scheme://host[:port]` with a host of
/// lowercase letters, digits, `-` and `.`; a wildcard pattern admits exactly one label before its suffix.
pub fn cors_origin(data: &[u8]) {
    let Ok(origin) = std::str::from_utf8(data) else {
        return;
    };
    let spec = CorsSpec {
        origins: vec![
            OriginPattern::Exact("https://app.example.com".into()),
            OriginPattern::Wildcard {
                scheme: "https".into(),
                suffix: ".aggios.app".into(),
            },
            OriginPattern::SameHost,
        ],
        methods: vec![http::Method::GET],
        headers: vec![],
        expose_headers: vec![],
        credentials: false,
        max_age: 0,
    };
    let host = "acme.aggios.app";
    let got = cors::origin_allowed(&spec, origin, host);
    assert_eq!(got, reference_origin(origin, host), "{origin:?}");
}

fn reference_origin(origin: &str, host: &str) -> bool {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let (o_host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    };
    let _ = port;
    // A host is dot-separated labels of letters, digits and inner hyphens.
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if o_host.is_empty() || !o_host.split('.').all(label) {
        return false;
    }
    if origin == "https://app.example.com" {
        return true;
    }
    if scheme == "https" {
        if let Some(label) = o_host.strip_suffix(".aggios.app") {
            if !label.is_empty() && !label.contains('.') {
                return true;
            }
        }
    }
    (scheme == "https" || scheme == "http") && o_host == host
}

/// The PROXY protocol header parser (`support::proxy_protocol`): a header it accepts lies within the
/// bytes given and within the bound, is accepted from its own bytes alone, and every shorter prefix is
/// `Incomplete` (so reading more can never turn a refusal into an acceptance or the reverse); it asks
/// for more bytes only below the bound; and a v2 header it writes for two addresses reads back as
/// the source.
pub fn proxy_protocol(data: &[u8]) {
    use crate::support::proxy_protocol::{parse, v2_header, Parsed, V2_MAX};
    match parse(data) {
        Parsed::Header { len, source } => {
            assert!(
                len <= data.len() && len <= V2_MAX,
                "{len} of {}",
                data.len()
            );
            assert_eq!(parse(&data[..len]), Parsed::Header { len, source });
            for i in 0..len {
                assert_eq!(parse(&data[..i]), Parsed::Incomplete, "prefix {i} of {len}");
            }
        }
        Parsed::Incomplete => assert!(data.len() < V2_MAX, "{} bytes", data.len()),
        Parsed::Invalid(_) => {}
    }
    if data.len() >= 36 {
        let v6 = |b: &[u8]| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(o))
        };
        let port = u16::from_be_bytes([data[32], data[33]]);
        let (src, dst) = if data[34] % 2 == 0 {
            let v4 =
                |b: &[u8]| std::net::IpAddr::V4(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            (v4(&data[..4]), v4(&data[4..8]))
        } else {
            (v6(&data[..16]), v6(&data[16..32]))
        };
        let src = std::net::SocketAddr::new(src, port);
        let header = v2_header(src, std::net::SocketAddr::new(dst, 443));
        assert_eq!(
            parse(&header),
            Parsed::Header {
                len: header.len(),
                source: Some(src)
            }
        );
    }
}
