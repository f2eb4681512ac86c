//! CORS per route: origin matching, preflights answered at the edge, headers on actual responses. Pure.

use http::{HeaderName, HeaderValue, Method};

use crate::config::{CorsSpec, OriginPattern};

/// Whether `origin` (as sent by the browser) may call a route whose request host is `host`.
pub fn origin_allowed(spec: &CorsSpec, origin: &str, host: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let o_host = rest
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(rest, |(h, _)| h);
    spec.origins.iter().any(|p| match p {
        OriginPattern::Exact(e) => e.eq_ignore_ascii_case(origin),
        OriginPattern::Wildcard { scheme: s, suffix } => {
            // Exactly one DNS label before the suffix (found by fuzzing: `https://acm=.aggios.app`
            // passed when any bytes without a dot counted as a label).
            s.eq_ignore_ascii_case(scheme)
                && o_host.len() > suffix.len()
                && o_host.is_char_boundary(o_host.len() - suffix.len())
                && o_host[o_host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && crate::config::is_label(
                    &o_host[..o_host.len() - suffix.len()].to_ascii_lowercase(),
                )
        }
        OriginPattern::SameHost => {
            (scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http"))
                && o_host.eq_ignore_ascii_case(host)
        }
    })
}

/// Why a preflight is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightDenied {
    Origin,
    Method,
    Header,
}

/// The response headers of an allowed preflight.
pub fn preflight(
    spec: &CorsSpec,
    origin: &str,
    host: &str,
    method: &[u8],
    request_headers: Option<&[u8]>,
) -> Result<Vec<(HeaderName, HeaderValue)>, PreflightDenied> {
    if !origin_allowed(spec, origin, host) {
        return Err(PreflightDenied::Origin);
    }
    let m = Method::from_bytes(method).map_err(|_| PreflightDenied::Method)?;
    if !spec.methods.contains(&m) {
        return Err(PreflightDenied::Method);
    }
    if let Some(hs) = request_headers {
        let hs = std::str::from_utf8(hs).map_err(|_| PreflightDenied::Header)?;
        for h in hs.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            if !spec
                .headers
                .iter()
                .any(|a| a.as_str().eq_ignore_ascii_case(h))
            {
                return Err(PreflightDenied::Header);
            }
        }
    }
    let join = |names: Vec<&str>| {
        HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static(""))
    };
    let mut out = vec![
        (
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(origin).map_err(|_| PreflightDenied::Origin)?,
        ),
        (
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            join(spec.methods.iter().map(Method::as_str).collect()),
        ),
        (
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            join(spec.headers.iter().map(HeaderName::as_str).collect()),
        ),
        (
            http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(spec.max_age),
        ),
        (
            http::header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ),
    ];
    if spec.credentials {
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    Ok(out)
}

/// Headers for an actual (non-preflight) response to an allowed origin.
pub fn actual(spec: &CorsSpec, origin: &str) -> Vec<(HeaderName, HeaderValue)> {
    let Ok(o) = HeaderValue::from_str(origin) else {
        return Vec::new();
    };
    let mut out = vec![(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, o)];
    if spec.credentials {
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    if !spec.expose_headers.is_empty() {
        let names: Vec<&str> = spec.expose_headers.iter().map(HeaderName::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Crashes of the `cors_origin` fuzz target, kept.
    #[test]
    fn a_wildcard_admits_one_dns_label_only() {
        let host = "acme.aggios.app";
        for bad in [
            "https://acm=.aggios.app",
            "https://-x.aggios.app",
            "https://a_b.aggios.app",
            "https://a.b.aggios.app",
            "https://.aggios.app",
            "https://évil.aggios.app",
            "https://€€€€aggios.app",
            // The suffix would start inside the '€': not a boundary (slicing there would panic).
            "https://aa€aggios.app",
        ] {
            assert!(!origin_allowed(&spec(), bad, host), "{bad}");
        }
        for good in [
            "https://acme.aggios.app",
            "https://ACME.aggios.app:8443",
            "https://x1.aggios.app/",
        ] {
            assert!(origin_allowed(&spec(), good, host), "{good}");
        }
    }

    fn spec() -> CorsSpec {
        CorsSpec {
            origins: vec![
                OriginPattern::Exact("https://app.example.com".into()),
                OriginPattern::Wildcard {
                    scheme: "https".into(),
                    suffix: ".aggios.app".into(),
                },
                OriginPattern::SameHost,
            ],
            methods: vec![Method::GET, Method::POST],
            headers: vec![
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
            ],
            expose_headers: vec![],
            credentials: true,
            max_age: 600,
        }
    }

    #[test]
    fn origins() {
        let s = spec();
        for ok in [
            "https://app.example.com",
            "https://acme.aggios.app",
            "https://acme.aggios.app:8443",
            "https://api.shop.test",
        ] {
            assert!(origin_allowed(&s, ok, "api.shop.test"), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://evil.com",
            "https://a.b.aggios.app",
            "https://aggios.app",
            "https://evilaggios.app",
            "null",
            "https://app.example.com.evil.io",
        ] {
            assert!(!origin_allowed(&s, bad, "api.shop.test"), "{bad}");
        }
    }

    #[test]
    fn preflights() {
        let s = spec();
        let h = preflight(
            &s,
            "https://acme.aggios.app",
            "x",
            b"POST",
            Some(b"Authorization, content-type"),
        )
        .expect("allowed");
        assert!(h
            .iter()
            .any(|(n, v)| n == http::header::ACCESS_CONTROL_ALLOW_ORIGIN
                && v == "https://acme.aggios.app"));
        assert_eq!(
            preflight(&s, "https://evil.com", "x", b"GET", None),
            Err(PreflightDenied::Origin)
        );
        assert_eq!(
            preflight(&s, "https://acme.aggios.app", "x", b"DELETE", None),
            Err(PreflightDenied::Method)
        );
        assert_eq!(
            preflight(
                &s,
                "https://acme.aggios.app",
                "x",
                b"GET",
                Some(b"x-secret")
            ),
            Err(PreflightDenied::Header)
        );
    }

    /// An actual response's headers: the origin echoed, credentials and exposed headers as configured.
    #[test]
    fn actual_responses() {
        let mut s = spec();
        let h = actual(&s, "https://acme.aggios.app");
        assert_eq!(
            h,
            vec![
                (
                    http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("https://acme.aggios.app")
                ),
                (
                    http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true")
                ),
            ]
        );
        s.credentials = false;
        s.expose_headers = vec![
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ratelimit"),
        ];
        assert_eq!(
            actual(&s, "https://acme.aggios.app"),
            vec![
                (
                    http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("https://acme.aggios.app")
                ),
                (
                    http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("x-request-id, ratelimit")
                ),
            ]
        );
        // An origin that is no header value gets no header at all.
        assert!(actual(&s, "https://a\nb").is_empty());
    }
}
