//! Header rules of a route: `request_headers` / `response_headers` rewrites and `security_headers`.

use super::*;

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
