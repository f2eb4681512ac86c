//! Header rewrites on the way to the upstream and back: forwarding headers, request ids, hop-by-hop
//! removal, route rules.

use std::net::IpAddr;

use http::header::CONNECTION;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::HeaderRules;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static(contracts::headers::REQUEST_ID);
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut last = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = value.to_str() else {
            return Some(last);
        };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    last = ip;
                    if !is_trusted(ip, trusted) {
                        return Some(ip);
                    }
                }
                Err(_) => return Some(last),
            }
        }
    }
    Some(last)
}

/// A client-supplied request id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]` (the rule is
/// the backend's too: `contracts`).
pub use contracts::valid_request_id;

/// A new random request id: 32 lowercase hex digits (128 bits).
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut out = String::with_capacity(32);
    for i in (0..32).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize] as char);
    }
    out
}

/// The fields the edge manages in a request on its way upstream: each is removed only when the client
/// sent it, found in one pass over the request's field names ([`Managed::scan`]) instead of one map
/// lookup per name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Field {
    KeepAlive,
    ProxyConnection,
    ProxyAuthenticate,
    ProxyAuthorization,
    Te,
    Trailer,
    Connection,
    Upgrade,
    UserId,
    TenantId,
    UserEmail,
    UserRole,
    ClientIp,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    ApiKey,
    Authorization,
    /// RFC 7239 `Forwarded`: kept only from trusted proxies.
    Forwarded,
    /// `X-Real-IP`: kept only from trusted proxies.
    RealIp,
    /// Any `X-Auth-*` field (removed by prefix, never by [`Field::name`]).
    AuthPrefixed,
}

/// Every field's name, in [`Field`] order.
const NAMES: [&str; 22] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "connection",
    "upgrade",
    contracts::headers::USER_ID,
    contracts::headers::TENANT_ID,
    contracts::headers::USER_EMAIL,
    contracts::headers::USER_ROLE,
    contracts::headers::CLIENT_IP,
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    contracts::headers::REQUEST_ID,
    "x-api-key",
    "authorization",
    "forwarded",
    "x-real-ip",
    "x-auth-*",
];

/// Hop-by-hop fields (RFC 9110 §7.6.1) that must not be forwarded. `Transfer-Encoding` and
/// `Content-Length` are left to Pingora, which re-frames the body itself.
const HOP_BY_HOP: [Field; 6] = [
    Field::KeepAlive,
    Field::ProxyConnection,
    Field::ProxyAuthenticate,
    Field::ProxyAuthorization,
    Field::Te,
    Field::Trailer,
];

/// The identity fields, in the order of `contracts::headers::IDENTITY`.
const IDENTITY_FIELDS: [Field; 4] = [
    Field::UserId,
    Field::TenantId,
    Field::UserEmail,
    Field::UserRole,
];

impl Field {
    /// The field's name (lowercase, as `http` keeps names).
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    fn of(name: &str) -> Option<Field> {
        if name.starts_with("x-auth-") {
            return Some(Field::AuthPrefixed);
        }
        NAMES[..Field::AuthPrefixed as usize]
            .iter()
            .position(|n| *n == name)
            .map(|i| FIELDS[i])
    }
}

/// Every field but `AuthPrefixed`, in [`Field`] order (the inverse of [`Field::name`]).
const FIELDS: [Field; 21] = [
    Field::KeepAlive,
    Field::ProxyConnection,
    Field::ProxyAuthenticate,
    Field::ProxyAuthorization,
    Field::Te,
    Field::Trailer,
    Field::Connection,
    Field::Upgrade,
    Field::UserId,
    Field::TenantId,
    Field::UserEmail,
    Field::UserRole,
    Field::ClientIp,
    Field::ForwardedFor,
    Field::ForwardedProto,
    Field::ForwardedHost,
    Field::RequestId,
    Field::ApiKey,
    Field::Authorization,
    Field::Forwarded,
    Field::RealIp,
];

/// Which managed fields a request carries.
#[derive(Clone, Copy, Default, Debug)]
pub struct Managed(u32);

/// The bit of [`Managed`] that says a field name contains `_`.
const UNDERSCORE: u32 = 1 << 31;

impl Managed {
    /// One pass over the request's field names.
    pub fn scan(req: &RequestHeader) -> Managed {
        let mut bits = 0u32;
        for name in req.headers.keys() {
            let name = name.as_str();
            if let Some(f) = Field::of(name) {
                bits |= 1 << f as u8;
            } else if name.as_bytes().contains(&b'_') {
                bits |= UNDERSCORE;
            }
        }
        Managed(bits)
    }

    fn has(self, f: Field) -> bool {
        self.0 & (1 << f as u8) != 0
    }

    /// Removes the field `f` when the scan saw it.
    pub fn remove(self, req: &mut RequestHeader, f: Field) {
        if self.has(f) {
            req.remove_header(f.name());
        }
    }
}

/// Removes every field whose name contains `_`: CGI, WSGI and PHP map `X_Tenant_Id` and `X-Tenant-Id`
/// to one variable (`HTTP_X_TENANT_ID`), so a look-alike would pass upstream for the identity field the
/// edge sets (`[forwarding] underscores_in_headers = true` keeps them).
pub fn strip_underscored(req: &mut RequestHeader, seen: Managed) {
    if seen.0 & UNDERSCORE == 0 {
        return;
    }
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

/// Removes hop-by-hop fields, including those `Connection` names, keeping an upgrade handshake intact.
pub fn strip_hop_by_hop(req: &mut RequestHeader, seen: Managed, upgrade: bool) {
    if seen.has(Field::Connection) {
        let named: Vec<String> = req
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "upgrade" && t != "close" && t != "keep-alive")
            .collect();
        for name in named {
            // Never let `Connection` make us drop framing or identity headers the proxy manages.
            if !matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "x-request-id"
            ) {
                req.remove_header(name.as_str());
            }
        }
        req.remove_header(&CONNECTION);
    }
    for f in HOP_BY_HOP {
        seen.remove(req, f);
    }
    if upgrade {
        let _ = req.insert_header("connection", HeaderValue::from_static("upgrade"));
    } else {
        seen.remove(req, Field::Upgrade);
    }
}

/// Whether the client's `TE` names `trailers` (read before [`strip_hop_by_hop`] removes it).
pub fn accepts_trailers(req: &RequestHeader) -> bool {
    req.headers.get_all("te").iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            t.trim_ascii()
                .split(|b| *b == b';')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        })
    })
}

/// The client address this gateway computed (right-most untrusted `X-Forwarded-For` entry, or the
/// peer), for the backend: a header of our own, never taken from a client.
pub use contracts::headers::CLIENT_IP;

/// An address as a field value, formatted on the stack (IPv4 without `fmt`: the common case).
pub fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; 40];
    let n = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(_) => {
            let mut w = std::io::Cursor::new(&mut buf[..]);
            std::io::Write::write_fmt(&mut w, format_args!("{ip}")).ok()?;
            w.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// Replaces any client-sent `X-Aggios-Client-Ip` with the address the gateway computed.
pub fn set_client_ip(req: &mut RequestHeader, seen: Managed, ip: Option<std::net::IpAddr>) {
    match ip.and_then(ip_value) {
        Some(v) => {
            let _ = req.insert_header(CLIENT_IP, v);
        }
        None => seen.remove(req, Field::ClientIp),
    }
}

/// Strips every client-supplied identity header (`X-User-*`, `X-Tenant-Id`, `X-Auth-*`) and sets them
/// from `identity` when the request was authenticated.
pub fn set_identity(
    req: &mut RequestHeader,
    seen: Managed,
    identity: Option<&crate::edge::auth::Identity>,
) {
    if identity.is_none() {
        for f in IDENTITY_FIELDS {
            seen.remove(req, f);
        }
    }
    if seen.has(Field::AuthPrefixed) {
        let auth_named: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-auth-"))
            .cloned()
            .collect();
        for h in auth_named {
            req.remove_header(&h);
        }
    }
    if let Some(id) = identity {
        let values = [
            Some(id.user_id.as_str()),
            Some(id.tenant.as_str()),
            id.email.as_deref(),
            id.role.as_deref(),
        ];
        for (f, value) in IDENTITY_FIELDS.into_iter().zip(values) {
            match value.and_then(|v| HeaderValue::from_str(v).ok()) {
                Some(v) => {
                    let _ = req.insert_header(f.name(), v);
                }
                None => seen.remove(req, f),
            }
        }
        // Which integration acts, and with what grant (client-sent `X-Auth-*` were removed above).
        if let Some(client) = id.client_id.as_deref() {
            for (name, value) in [
                (contracts::headers::OAUTH_CLIENT_ID, client),
                (
                    contracts::headers::OAUTH_SCOPE,
                    id.scope.as_deref().unwrap_or_default(),
                ),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    let _ = req.insert_header(name, v);
                }
            }
        }
    }
}

/// The verified client certificate's fields (after [`set_identity`] removed every client-sent
/// `X-Auth-*`). Its values are header-safe by construction (`tls::client_auth::header_safe`).
pub fn set_client_cert(req: &mut RequestHeader, cert: &crate::tls::client_auth::PeerCert) {
    for (name, value) in [
        (contracts::headers::CLIENT_CERT_SUBJECT, &cert.subject),
        (contracts::headers::CLIENT_CERT_SAN, &cert.sans),
        (contracts::headers::CLIENT_CERT_SHA256, &cert.sha256),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            let _ = req.insert_header(name, v);
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host`: appended to when the peer is a trusted proxy, replaced otherwise.
pub fn set_forwarded(
    req: &mut RequestHeader,
    seen: Managed,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    proto: &'static str,
    host: &str,
) {
    let proto = HeaderValue::from_static(proto);
    if trusted_peer {
        let mut chain = req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(p) = peer {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(&p.to_string());
        }
        set(req, seen, Field::ForwardedFor, &chain);
        // Looked up again (not taken from `seen`): `Connection` may have named and removed them.
        if !req.headers.contains_key("x-forwarded-proto") {
            let _ = req.insert_header("x-forwarded-proto", proto);
        }
        if !req.headers.contains_key("x-forwarded-host") {
            set(req, seen, Field::ForwardedHost, host);
        }
    } else {
        // Other spellings of the same facts, which only a trusted proxy may state.
        seen.remove(req, Field::Forwarded);
        seen.remove(req, Field::RealIp);
        match peer.and_then(ip_value) {
            Some(v) => {
                let _ = req.insert_header("x-forwarded-for", v);
            }
            None => seen.remove(req, Field::ForwardedFor),
        }
        let _ = req.insert_header("x-forwarded-proto", proto);
        set(req, seen, Field::ForwardedHost, host);
    }
}

/// Sets the field `f` to `value`, or removes it when `value` cannot be a field value.
fn set(req: &mut RequestHeader, seen: Managed, f: Field, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            let _ = req.insert_header(f.name(), v);
        }
        Err(_) => seen.remove(req, f),
    }
}

/// Sets the request id, replacing one the client sent.
pub fn set_request_id(req: &mut RequestHeader, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        let _ = req.insert_header(contracts::headers::REQUEST_ID, v);
    }
}

/// A message head whose fields a route's rules rewrite (Pingora's request and response heads share no
/// trait of their own).
pub trait RuleTarget {
    fn remove(&mut self, name: &http::HeaderName);
    fn insert(&mut self, name: http::HeaderName, value: HeaderValue);
    fn append(&mut self, name: http::HeaderName, value: HeaderValue);
}

/// Both heads have the same three methods under the same names.
macro_rules! rule_target {
    ($($head:ty),*) => {$(
        impl RuleTarget for $head {
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: http::HeaderName, value: HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn append(&mut self, name: http::HeaderName, value: HeaderValue) {
                let _ = self.append_header(name, value);
            }
        }
    )*};
}

rule_target!(RequestHeader, ResponseHeader);

/// Applies a route's header rules to a request or response head: remove, then set, then add.
pub fn apply_rules(head: &mut impl RuleTarget, rules: &HeaderRules) {
    for n in &rules.remove {
        head.remove(n);
    }
    for (n, v) in &rules.set {
        head.insert(n.clone(), v.clone());
    }
    for (n, v) in &rules.add {
        head.append(n.clone(), v.clone());
    }
}

/// Applies a route's request rules.
pub fn apply_request_rules(req: &mut RequestHeader, rules: &HeaderRules) {
    apply_rules(req, rules);
}

/// Applies a route's response rules.
pub fn apply_response_rules(resp: &mut ResponseHeader, rules: &HeaderRules) {
    apply_rules(resp, rules);
}

/// The upstream path after `strip_prefix`: `/api/users?x` with prefix `/api` → `/users?x`.
pub fn strip_path_prefix(path_and_query: &str, prefix: &str) -> Option<String> {
    if prefix == "/" {
        return None;
    }
    let rest = path_and_query.strip_prefix(prefix.trim_end_matches('/'))?;
    Some(if rest.is_empty() || rest.starts_with('?') {
        format!("/{rest}")
    } else if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_walks_trusted_hops() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.2"),
        );
        let peer = Some("10.0.0.1".parse().expect("ip"));
        assert_eq!(
            client_ip(peer, &h, &trusted),
            Some("1.2.3.4".parse().expect("ip"))
        );
        let untrusted = Some("9.9.9.9".parse().expect("ip"));
        assert_eq!(client_ip(untrusted, &h, &trusted), untrusted);
    }

    /// The one-pass rewrite removes every managed field a client sent and nothing else.
    #[test]
    fn managed_fields_sent_by_a_client_are_replaced_or_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (n, v) in [
            ("host", "acme.aggios.app"),
            ("accept", "*/*"),
            ("connection", "keep-alive, x-custom, x-request-id"),
            ("x-custom", "named by Connection"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "websocket"),
            ("x-user-id", "evil"),
            ("x-tenant-id", "evil"),
            ("x-user-email", "evil@x"),
            ("x-user-role", "admin"),
            ("x-auth-anything", "evil"),
            ("x-aggios-client-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-request-id", "client-id"),
            ("x-api-key", "ak_unverified"),
        ] {
            req.append_header(n, v).expect("header");
        }
        let seen = Managed::scan(&req);
        strip_hop_by_hop(&mut req, seen, false);
        set_identity(&mut req, seen, None);
        seen.remove(&mut req, Field::ApiKey);
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        set_forwarded(&mut req, seen, Some(peer), false, "http", "acme.aggios.app");
        set_client_ip(&mut req, seen, Some(peer));
        set_request_id(&mut req, "edge-id");
        let mut names: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "host",
                "x-aggios-client-ip",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        let get = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-for"), Some("192.0.2.7"));
        assert_eq!(get("x-aggios-client-ip"), Some("192.0.2.7"));
        assert_eq!(get("x-forwarded-proto"), Some("http"));
        assert_eq!(get("x-forwarded-host"), Some("acme.aggios.app"));
        assert_eq!(get("x-request-id"), Some("edge-id"));
        // The wire form keeps one entry per field (the case map stays in step with the values).
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8_lossy(&wire).matches("\r\n").count(),
            names.len()
        );
    }

    #[test]
    fn field_names_round_trip_and_match_the_contract() {
        for f in FIELDS {
            assert_eq!(Field::of(f.name()), Some(f));
        }
        assert_eq!(Field::of("x-auth-role"), Some(Field::AuthPrefixed));
        assert_eq!(Field::of("accept"), None);
        assert_eq!(
            IDENTITY_FIELDS.map(Field::name),
            contracts::headers::IDENTITY
        );
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.99.9",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            let v = ip_value(parsed).expect("value");
            assert_eq!(v.to_str().expect("ascii"), parsed.to_string());
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 32);
    }

    #[test]
    fn strip_prefix_keeps_query_and_root() {
        assert_eq!(
            strip_path_prefix("/api/users?x=1", "/api").as_deref(),
            Some("/users?x=1")
        );
        assert_eq!(strip_path_prefix("/api", "/api").as_deref(), Some("/"));
        assert_eq!(strip_path_prefix("/api?x", "/api").as_deref(), Some("/?x"));
        assert_eq!(strip_path_prefix("/x", "/"), None);
    }
}
