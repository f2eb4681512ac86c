//! `cors = { … }` of a route: allowed origins (exact or wildcard), methods, headers, credentials.

use super::*;

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
