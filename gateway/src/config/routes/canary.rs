//! `canary = { … }` of a route: a share of its traffic (sticky by a cookie or header, or not) sent to
//! another upstream, rolled back on errors or latency.

use super::*;

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

pub(super) fn validate_canary(
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
    let sticky = super::super::one_of(
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
        window: super::super::duration_or(&f.window, DEFAULT_CANARY_WINDOW, diags),
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
