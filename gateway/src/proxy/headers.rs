//! Header rewrites on the way to the upstream and back: forwarding headers, request ids, hop-by-hop
//! removal, route rules.

use std::net::IpAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::HeaderRules;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static(contracts::headers::REQUEST_ID);
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop fields (RFC 9110 §7.6.1) that must not be forwarded. `Transfer-Encoding` and
/// `Content-Length` are left to Pingora, which re-frames the body itself.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

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

/// A client-supplied request id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

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

/// Removes hop-by-hop fields, including those `Connection` names, keeping an upgrade handshake intact.
pub fn strip_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
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
    for h in HOP_BY_HOP {
        req.remove_header(h);
    }
    req.remove_header(&CONNECTION);
    if upgrade {
        let _ = req.insert_header(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        req.remove_header(&UPGRADE);
    }
}

/// The client address this gateway computed (right-most untrusted `X-Forwarded-For` entry, or the
/// peer), for the backend: a header of our own, never taken from a client.
pub use contracts::headers::CLIENT_IP;

/// Replaces any client-sent `X-Aggios-Client-Ip` with the address the gateway computed.
pub fn set_client_ip(req: &mut RequestHeader, ip: Option<std::net::IpAddr>) {
    req.remove_header(CLIENT_IP);
    if let Some(ip) = ip {
        let mut buf = [0u8; 40];
        let mut w = std::io::Cursor::new(&mut buf[..]);
        if std::io::Write::write_fmt(&mut w, format_args!("{ip}")).is_ok() {
            let n = w.position() as usize;
            if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
                let _ = req.insert_header(CLIENT_IP, v);
            }
        }
    }
}

/// Identity headers a client must never choose; the gateway sets them from a verified token only.
use contracts::headers::IDENTITY;

/// Strips every client-supplied identity header (`X-User-*`, `X-Tenant-Id`, `X-Auth-*`) and sets them
/// from `identity` when the request was authenticated.
pub fn set_identity(req: &mut RequestHeader, identity: Option<&crate::proxy::auth::Identity>) {
    for h in IDENTITY {
        req.remove_header(h);
    }
    let auth_named: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-auth-"))
        .cloned()
        .collect();
    for h in auth_named {
        req.remove_header(&h);
    }
    if let Some(id) = identity {
        let pairs = [
            (contracts::headers::USER_ID, Some(id.user_id.as_str())),
            (contracts::headers::TENANT_ID, Some(id.tenant.as_str())),
            (contracts::headers::USER_EMAIL, id.email.as_deref()),
            (contracts::headers::USER_ROLE, id.role.as_deref()),
        ];
        for (name, value) in pairs {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                let _ = req.insert_header(name, v);
            }
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host`: appended to when the peer is a trusted proxy, replaced otherwise.
pub fn set_forwarded(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    proto: &'static str,
    host: &str,
) {
    let peer_s = peer.map(|p| p.to_string());
    if trusted_peer {
        let prior: Vec<String> = req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let mut chain = prior.join(", ");
        if let Some(p) = &peer_s {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(p);
        }
        set(req, &X_FORWARDED_FOR, &chain);
        if req.headers.get(&X_FORWARDED_PROTO).is_none() {
            set(req, &X_FORWARDED_PROTO, proto);
        }
        if req.headers.get(&X_FORWARDED_HOST).is_none() {
            set(req, &X_FORWARDED_HOST, host);
        }
    } else {
        match &peer_s {
            Some(p) => set(req, &X_FORWARDED_FOR, p),
            None => {
                req.remove_header(&X_FORWARDED_FOR);
            }
        }
        set(req, &X_FORWARDED_PROTO, proto);
        set(req, &X_FORWARDED_HOST, host);
    }
}

fn set(req: &mut RequestHeader, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            let _ = req.insert_header(name.clone(), v);
        }
        Err(_) => {
            req.remove_header(name);
        }
    }
}

/// Applies a route's request rules: remove, then set, then add.
pub fn apply_request_rules(req: &mut RequestHeader, rules: &HeaderRules) {
    for n in &rules.remove {
        req.remove_header(n);
    }
    for (n, v) in &rules.set {
        let _ = req.insert_header(n.clone(), v.clone());
    }
    for (n, v) in &rules.add {
        let _ = req.append_header(n.clone(), v.clone());
    }
}

/// Applies a route's response rules: remove, then set, then add.
pub fn apply_response_rules(resp: &mut ResponseHeader, rules: &HeaderRules) {
    for n in &rules.remove {
        resp.remove_header(n);
    }
    for (n, v) in &rules.set {
        let _ = resp.insert_header(n.clone(), v.clone());
    }
    for (n, v) in &rules.add {
        let _ = resp.append_header(n.clone(), v.clone());
    }
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
