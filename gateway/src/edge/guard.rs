//! Strict checks of the raw request head, before anything routes on it.
//!
//! Pingora's HTTP/1 parser is lenient (bare LF, `Transfer-Encoding: chunked, chunked`, no Host, 256
//! headers, ~1 MiB heads). A request that two parsers could read differently is a smuggling vector, so the
//! edge refuses it here and closes the connection.

use crate::edge::error::EdgeError;

/// Limits applied to the head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// What the check learnt about the framing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeadFacts {
    pub content_length: Option<u64>,
    pub chunked: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The head limits for a request that reached us already parsed (HTTP/2, h2c): field count, and the
/// header list's size as HTTP/2 counts it (name + value + 32 per field, RFC 9113 §6.5.2, with the
/// pseudo-header fields), so that `max_headers` and `max_header_bytes` hold on every protocol.
pub fn check_parsed_head(
    headers: &http::HeaderMap,
    method: &http::Method,
    uri: &http::Uri,
    limits: HeadLimits,
) -> Result<(), EdgeError> {
    if headers.len() > limits.max_headers {
        return Err(EdgeError::TooManyHeaders);
    }
    // :method, :scheme, :authority and :path (the URI carries the last three).
    let mut size = method.as_str().len() + uri.to_string().len() + 4 * 32;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 32;
        if size > limits.max_header_bytes {
            return Err(EdgeError::HeaderTooLarge);
        }
    }
    if size > limits.max_header_bytes {
        return Err(EdgeError::HeaderTooLarge);
    }
    Ok(())
}

/// Checks a raw HTTP/1.x request head (request line + header fields + the empty line).
pub fn check_head(raw: &[u8], limits: HeadLimits) -> Result<HeadFacts, EdgeError> {
    if raw.len() > limits.max_header_bytes {
        return Err(EdgeError::HeaderTooLarge);
    }
    let mut facts = HeadFacts::default();
    let mut request_line_read = false;
    let mut fields = 0usize;
    let mut hosts = 0usize;
    let mut te_seen = false;
    let mut start = 0usize;
    let mut request_target: &[u8] = b"";
    let mut host_value: &[u8] = b"";
    let mut version_11 = true;
    while start < raw.len() {
        let rel = raw[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(EdgeError::Malformed("incomplete header line"))?;
        let end = start + rel;
        if end == start || raw[end - 1] != b'\r' {
            return Err(EdgeError::Malformed("bare LF where CRLF is required"));
        }
        let line = &raw[start..end - 1];
        start = end + 1;
        if line.contains(&b'\r') {
            return Err(EdgeError::Malformed("bare CR in header section"));
        }
        if !request_line_read {
            // request-line = method SP request-target SP HTTP-version
            let mut parts = line.split(|&b| b == b' ');
            let method = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            let version = parts.next().unwrap_or_default();
            if method.is_empty()
                || !method.iter().all(|&b| is_tchar(b))
                || target.is_empty()
                || parts.next().is_some()
            {
                return Err(EdgeError::Malformed("invalid request line"));
            }
            // RFC 9112 §3.2: a request-target is visible ASCII (anything else percent-encoded).
            // Found by the differential test against h11: raw bytes above 0x7F passed the edge (and
            // httparse) and reached upstreams, each of which may read them its own way.
            if !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err(EdgeError::Malformed(
                    "request target with bytes other than visible ASCII",
                ));
            }
            match version {
                b"HTTP/1.1" => version_11 = true,
                b"HTTP/1.0" => version_11 = false,
                _ => return Err(EdgeError::Malformed("unsupported HTTP version")),
            }
            request_target = target;
            request_line_read = true;
            continue;
        }
        if line.is_empty() {
            // The empty line ends the head: nothing may follow it here (found by fuzzing: header
            // lines after it were checked as if they were part of the head).
            if start != raw.len() {
                return Err(EdgeError::Malformed("data after the end of the head"));
            }
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(EdgeError::Malformed(
                "obsolete line folding (obs-fold) in header",
            ));
        }
        fields += 1;
        if fields > limits.max_headers {
            return Err(EdgeError::TooManyHeaders);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(EdgeError::Malformed("header line without colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                EdgeError::Malformed("whitespace between header name and colon")
            } else {
                EdgeError::Malformed("invalid header name")
            });
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.iter().any(|&b| b == 0 || b == b'\n') {
            return Err(EdgeError::Malformed("invalid byte in header value"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if facts.content_length.is_some() {
                return Err(EdgeError::Malformed("duplicate Content-Length"));
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(EdgeError::Malformed("invalid Content-Length"));
            }
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(EdgeError::Malformed("invalid Content-Length"))?;
            facts.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te_seen || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(EdgeError::Malformed(
                    "unsupported Transfer-Encoding (only a single `chunked` is accepted)",
                ));
            }
            te_seen = true;
            facts.chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host_value = value;
        }
    }
    if facts.chunked && facts.content_length.is_some() {
        return Err(EdgeError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if facts.chunked && !version_11 {
        return Err(EdgeError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if hosts > 1 {
        return Err(EdgeError::Malformed("duplicate Host header"));
    }
    if hosts == 0 && version_11 {
        return Err(EdgeError::BadHost);
    }
    // absolute-form: the authority must name the same host as the Host header (RFC 9112 §3.2.2 lets us
    // prefer the target, but a mismatch is what smuggling and cache-poisoning attempts look like).
    if !request_target.starts_with(b"/") && request_target != b"*" {
        let lower = request_target.to_ascii_lowercase();
        let rest = lower
            .strip_prefix(b"http://")
            .or_else(|| lower.strip_prefix(b"https://"))
            .ok_or(EdgeError::Malformed("invalid request target"))?;
        let authority = rest
            .split(|&b| b == b'/' || b == b'?')
            .next()
            .unwrap_or_default();
        if !authority.eq_ignore_ascii_case(host_value) {
            return Err(EdgeError::Malformed(
                "absolute-form target names another host than Host",
            ));
        }
    }
    Ok(facts)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Headers a client's `Connection` must not name: hop-by-hop removal would strip the credential the
/// edge verified (so the backend acts on another, or none) or a header the gateway sets itself.
const PROTECTED: [&str; 9] = [
    "authorization",
    "x-api-key",
    "cookie",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
];

/// Refuses a `Connection` header that names a credential, an identity header or a forwarding header.
pub fn check_connection(headers: &http::HeaderMap) -> Result<(), EdgeError> {
    for value in headers.get_all(http::header::CONNECTION) {
        let Ok(v) = value.to_str() else {
            return Err(EdgeError::Malformed("Connection is not ASCII"));
        };
        for token in v.split(',').map(str::trim) {
            let t = token.to_ascii_lowercase();
            if PROTECTED.contains(&t.as_str())
                || t.starts_with("x-user-")
                || t.starts_with("x-auth-")
                || t == "x-tenant-id"
            {
                return Err(EdgeError::Malformed(
                    "Connection names a credential or identity header",
                ));
            }
        }
    }
    Ok(())
}

/// Rejects paths that a backend could resolve differently from the router: dot segments (plain or
/// percent-encoded), encoded slashes or backslashes, NUL, and anything not starting with `/`.
pub fn check_path(path: &str) -> Result<(), EdgeError> {
    if !path.starts_with('/') {
        return Err(EdgeError::Malformed("request path must start with `/`"));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
        || path.contains('\\')
    {
        return Err(EdgeError::PathTraversal);
    }
    for seg in lower.split('/') {
        let seg = seg.replace("%2e", ".");
        if seg == "." || seg == ".." {
            return Err(EdgeError::PathTraversal);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const L: HeadLimits = HeadLimits {
        max_header_bytes: 32 * 1024,
        max_headers: 100,
    };

    pub(super) fn check(s: &str) -> Result<HeadFacts, EdgeError> {
        check_head(s.as_bytes(), L)
    }

    #[test]
    fn accepts_normal_requests() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(HeadFacts::default())
        );
        let f = check("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").expect("ok");
        assert_eq!(f.content_length, Some(5));
        assert!(
            check("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                .expect("ok")
                .chunked
        );
        assert!(check("GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn refuses_smuggling_shapes() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            // Raw non-ASCII and control bytes in the request target (the differential test, h11).
            "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\x16 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            // A crash of the `http_head` fuzz target, kept: header lines after the empty line.
            "POST /x HTTP/1.1\r\nHost: a.t t-Length:54\r\n\r\nConnection: t-Length:54\r\n\r\n",
        ] {
            assert!(check(bad).is_err(), "accepted: {bad:?}");
        }
    }

    #[test]
    fn limits_give_431() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Err(EdgeError::TooManyHeaders)
        );
        let big = "a".repeat(33 * 1024);
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {big}\r\n\r\n")),
            Err(EdgeError::HeaderTooLarge)
        );
    }

    #[test]
    fn path_tricks() {
        assert!(check_path("/api/users").is_ok());
        assert!(check_path("/a.b/..c").is_ok());
        for bad in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E./x",
            "/a/./b",
            "/a%2fb",
            "/a\\b",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONNECTION, v.parse().expect("value"));
        h
    }

    #[test]
    fn connection_may_not_name_credentials_or_identity() {
        for bad in [
            "authorization",
            "keep-alive, Authorization",
            "x-api-key",
            "X-Tenant-Id",
            "x-user-role",
            "x-auth-foo",
            "x-forwarded-for",
            "cookie",
        ] {
            assert!(check_connection(&headers(bad)).is_err(), "{bad}");
        }
        for ok in ["keep-alive", "close", "upgrade", "te, x-custom"] {
            assert!(check_connection(&headers(ok)).is_ok(), "{ok}");
        }
        assert!(check_connection(&http::HeaderMap::new()).is_ok());
    }
}

/// Each rule on its own, with the refusal it gives, and each bound at its value and one past it (the
/// mutation run of #32: a test that only says "refused" lets one rule stand in for another).
#[cfg(test)]
mod rule_tests {
    use super::tests::check;
    use super::*;

    fn malformed(s: &str) -> &'static str {
        match check(s) {
            Err(EdgeError::Malformed(why)) => why,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn the_head_size_bound_is_inclusive() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let at = HeadLimits {
            max_header_bytes: head.len(),
            max_headers: 10,
        };
        assert!(check_head(head.as_bytes(), at).is_ok());
        let under = HeadLimits {
            max_header_bytes: head.len() - 1,
            ..at
        };
        assert_eq!(
            check_head(head.as_bytes(), under),
            Err(EdgeError::HeaderTooLarge)
        );
    }

    #[test]
    fn the_field_count_bound_is_inclusive_and_counts_host() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        let three = HeadLimits {
            max_header_bytes: 1024,
            max_headers: 3,
        };
        assert!(check_head(head.as_bytes(), three).is_ok());
        let two = HeadLimits {
            max_headers: 2,
            ..three
        };
        assert_eq!(
            check_head(head.as_bytes(), two),
            Err(EdgeError::TooManyHeaders)
        );
    }

    #[test]
    fn line_endings() {
        // A line feed at the very start of the head, and an empty line made of a bare LF.
        assert_eq!(
            malformed("\nGET / HTTP/1.1\r\n\r\n"),
            "bare LF where CRLF is required"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\n\n"),
            "bare LF where CRLF is required"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
            "bare CR in header section"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a"),
            "incomplete header line"
        );
        // The head as the edge gets it back from Pingora's parsed request: without its empty line.
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(HeadFacts::default())
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n"),
            "data after the end of the head"
        );
    }

    #[test]
    fn the_request_line_takes_exactly_three_parts() {
        for bad in [
            " / HTTP/1.1\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET  HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 x\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(malformed(bad), "invalid request line", "{bad:?}");
        }
        for bad in [
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            "GET /\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(malformed(bad), "unsupported HTTP version", "{bad:?}");
        }
        // Every token character is a method character; the target's visible-ASCII bounds are inclusive.
        assert!(check("M-!#$%&'*+.^_`|~9 /!~ HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert_eq!(
            malformed("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"),
            "request target with bytes other than visible ASCII"
        );
        assert_eq!(
            malformed("GET /\x1f HTTP/1.1\r\nHost: a\r\n\r\n"),
            "request target with bytes other than visible ASCII"
        );
    }

    #[test]
    fn header_lines() {
        for fold in [
            "GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\tb\r\n\r\n",
        ] {
            assert_eq!(
                malformed(fold),
                "obsolete line folding (obs-fold) in header"
            );
        }
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost a\r\n\r\n"),
            "header line without colon"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
            "invalid header name"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\nX(y: b\r\n\r\n"),
            "invalid header name"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\nX-Y : b\r\n\r\n"),
            "whitespace between header name and colon"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\nX-Y\t: b\r\n\r\n"),
            "whitespace between header name and colon"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
            "invalid byte in header value"
        );
    }

    #[test]
    fn content_length() {
        let cl = |v: &str| {
            check(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:{v}\r\n\r\n"
            ))
        };
        assert_eq!(cl("12").map(|f| f.content_length), Ok(Some(12)));
        // Optional whitespace on both sides, spaces and tabs, is not part of the value.
        assert_eq!(cl(" \t12 \t").map(|f| f.content_length), Ok(Some(12)));
        assert_eq!(cl(" 0").map(|f| f.content_length), Ok(Some(0)));
        // 19 digits always fit in a u64; 20 may not and are refused by length alone.
        assert_eq!(
            cl(" 9999999999999999999").map(|f| f.content_length),
            Ok(Some(9_999_999_999_999_999_999))
        );
        for bad in [" 00000000000000000001", " ", " \t ", " 1 2", " +1", " 0x10"] {
            assert_eq!(
                cl(bad),
                Err(EdgeError::Malformed("invalid Content-Length")),
                "{bad:?}"
            );
        }
        assert_eq!(
            malformed(
                "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nCONTENT-LENGTH: 1\r\n\r\n"
            ),
            "duplicate Content-Length"
        );
    }

    #[test]
    fn transfer_encoding() {
        let te = |v: &str, version: &str| {
            check(&format!(
                "POST / HTTP/{version}\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n"
            ))
        };
        assert_eq!(
            te("Chunked", "1.1"),
            Ok(HeadFacts {
                content_length: None,
                chunked: true
            })
        );
        let unsupported = "unsupported Transfer-Encoding (only a single `chunked` is accepted)";
        assert_eq!(te("gzip", "1.1"), Err(EdgeError::Malformed(unsupported)));
        assert_eq!(
            te("gzip, chunked", "1.1"),
            Err(EdgeError::Malformed(unsupported))
        );
        assert_eq!(
            te("chunked", "1.0"),
            Err(EdgeError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request"
            ))
        );
        for both in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(malformed(both), "both Content-Length and Transfer-Encoding");
        }
    }

    #[test]
    fn host() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nX: a\r\n\r\n"),
            Err(EdgeError::BadHost)
        );
        assert_eq!(
            check("GET / HTTP/1.0\r\nX: a\r\n\r\n"),
            Ok(HeadFacts::default())
        );
        assert_eq!(
            malformed("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"),
            "duplicate Host header"
        );
        assert!(check("GET / HTTP/1.0\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn absolute_form_names_the_host() {
        for ok in [
            "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET HTTPS://A.example:8443/x HTTP/1.1\r\nHost: a.EXAMPLE:8443\r\n\r\n",
            "GET http://a?q=/b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        let other = "absolute-form target names another host than Host";
        assert_eq!(
            malformed("GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            other
        );
        assert_eq!(
            malformed("GET http://a.b/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            other
        );
        assert_eq!(malformed("GET http://a/x HTTP/1.0\r\n\r\n"), other);
        assert_eq!(
            malformed("GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid request target"
        );
        assert_eq!(
            malformed("GET a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid request target"
        );
    }

    fn parsed(headers: &[(&str, &str)], uri: &str, limits: HeadLimits) -> Result<(), EdgeError> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        check_parsed_head(&map, &http::Method::GET, &uri.parse().expect("uri"), limits)
    }

    #[test]
    fn parsed_heads_count_fields_and_bytes_as_http2_does() {
        // Lengths whose sums and products differ (3 + 1 + 3 + 3 against 3 × 1 + 3 × 3).
        let fields = [("x-a", "1"), ("x-a", "333")];
        // GET (3) + "http://a/b" (10) + 4 × 32, then (3 + 1 + 32) and (3 + 3 + 32): 215 bytes.
        let exact = HeadLimits {
            max_header_bytes: 215,
            max_headers: 2,
        };
        assert_eq!(parsed(&fields, "http://a/b", exact), Ok(()));
        assert_eq!(
            parsed(
                &fields,
                "http://a/b",
                HeadLimits {
                    max_header_bytes: 214,
                    ..exact
                }
            ),
            Err(EdgeError::HeaderTooLarge)
        );
        assert_eq!(
            parsed(
                &fields,
                "http://a/b",
                HeadLimits {
                    max_headers: 1,
                    ..exact
                }
            ),
            Err(EdgeError::TooManyHeaders)
        );
        // No fields at all: the pseudo-headers alone are held to the bound (3 + 10 + 128 = 141).
        let bare = HeadLimits {
            max_header_bytes: 141,
            max_headers: 0,
        };
        assert_eq!(parsed(&[], "http://a/b", bare), Ok(()));
        assert_eq!(
            parsed(
                &[],
                "http://a/b",
                HeadLimits {
                    max_header_bytes: 140,
                    ..bare
                }
            ),
            Err(EdgeError::HeaderTooLarge)
        );
    }

    #[test]
    fn connection_names_each_protected_header_in_any_form() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::CONNECTION, "keep-alive".parse().expect("v"));
        h.append(
            http::header::CONNECTION,
            "te ,  X-Real-IP ".parse().expect("v"),
        );
        assert_eq!(
            check_connection(&h),
            Err(EdgeError::Malformed(
                "Connection names a credential or identity header"
            ))
        );
        for name in PROTECTED {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::CONNECTION, name.parse().expect("v"));
            assert!(check_connection(&h).is_err(), "{name}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_bytes(b"caf\xe9").expect("v"),
        );
        assert_eq!(
            check_connection(&h),
            Err(EdgeError::Malformed("Connection is not ASCII"))
        );
        // Near misses are fine: only the names themselves and the x-user-/x-auth- families.
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            "x-tenant-ids, x-user, x-authz, my-x-user-a"
                .parse()
                .expect("v"),
        );
        assert_eq!(check_connection(&h), Ok(()));
    }

    #[test]
    fn each_path_rule_on_its_own() {
        for (path, want) in [
            ("/a%2Fb", EdgeError::PathTraversal),
            ("/a%5cb", EdgeError::PathTraversal),
            ("/a%00b", EdgeError::PathTraversal),
            ("/a\\b", EdgeError::PathTraversal),
            ("/a/.", EdgeError::PathTraversal),
            ("/..", EdgeError::PathTraversal),
            ("/a/%2E", EdgeError::PathTraversal),
            ("/a/.%2e/", EdgeError::PathTraversal),
            (
                "a/b",
                EdgeError::Malformed("request path must start with `/`"),
            ),
            ("", EdgeError::Malformed("request path must start with `/`")),
        ] {
            assert_eq!(check_path(path), Err(want), "{path:?}");
        }
        for ok in [
            "/",
            "/a/...",
            "/.well-known/x",
            "/a%2e%2e%2e",
            "/a%20b",
            "/a%2",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok:?}");
        }
    }
}
