//! `[plans]`: tenants' plans from the backend. With it, every request of a tenant is checked against
//! its plan (a suspended tenant is refused), routes may list the built-in rate limit `plan` (the
//! tenant's own rate and burst, one limit for every replica) and count requests against the tenant's
//! monthly quota (`quota` of a route).

use std::time::Duration;

use super::file::PlansFile;
use super::rate_limits::{FailMode, KeyPart, Rate, RateLimitSpec, Scope};
use super::{duration_or, one_of, positive, Diagnostic};

pub use super::rate_limits::PLAN_POLICY;

/// How long a policy change may take to reach a replica whose invalidation message was lost, unless
/// `cache_ttl` says otherwise.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// A `cache_ttl` above this is refused: a lost message would leave a suspended tenant served that long.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);

/// What a request gets when its tenant's policy cannot be fetched (the backend down or slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPolicyError {
    /// The default plan's limits (`[plans.default]`), never unlimited.
    Default,
    /// 503 `policy_unavailable`.
    Refuse,
}

/// The limits applied without a tenant's own policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPlan {
    pub plan: String,
    pub rate: Rate,
    /// Requests per calendar month; 0 = none.
    pub monthly_requests: u64,
}

/// Validated `[plans]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// The backend's policy lookup, with `{tenant}` in it.
    pub lookup_url: String,
    pub lookup_timeout: Duration,
    /// A change whose invalidation message is lost is applied within this time.
    pub cache_ttl: Duration,
    pub on_policy_error: OnPolicyError,
    /// Replicas sharing the limits: while Redis is away, each enforces `rate / expected_replicas`.
    pub expected_replicas: u64,
    pub default: DefaultPlan,
}

impl PlanSettings {
    /// The built-in `plan` rate limit: per tenant, the tenant's own rate per second (the default plan's
    /// until its policy is known), in Redis for the whole fleet; while Redis is away, the default plan's
    /// rate split over `expected_replicas`, per replica.
    pub fn policy(&self) -> RateLimitSpec {
        RateLimitSpec {
            name: PLAN_POLICY.to_string(),
            key: vec![KeyPart::Tenant],
            rate: self.default.rate,
            period: Duration::from_secs(1),
            scope: Scope::Global,
            fail: FailMode::Local,
            expected_replicas: self.expected_replicas,
            headers: true,
            overrides: Default::default(),
            plan: true,
        }
    }
}

fn count(
    v: &Option<toml::Spanned<i64>>,
    default: u64,
    what: &str,
    min: i64,
    diags: &mut Vec<Diagnostic>,
) -> u64 {
    match v {
        None => default,
        Some(s) if (min..=1_000_000_000_000).contains(s.get_ref()) => *s.get_ref() as u64,
        Some(s) => {
            diags.push(Diagnostic::at(
                s,
                format!("{what} must be between {min} and 1000000000000"),
            ));
            default
        }
    }
}

pub(super) fn validate_plans(p: &PlansFile, diags: &mut Vec<Diagnostic>) -> PlanSettings {
    let lookup_url = {
        let u = p.lookup_url.get_ref();
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.contains("{tenant}")
            && u.replace("{tenant}", "t").parse::<http::Uri>().is_ok();
        if !ok {
            diags.push(Diagnostic::at(
                &p.lookup_url,
                "lookup_url must be an http(s) URL containing `{tenant}`",
            ));
        }
        u.clone()
    };
    let cache_ttl = duration_or(&p.cache_ttl, DEFAULT_CACHE_TTL, diags);
    if let Some(t) = p.cache_ttl.as_ref().filter(|_| cache_ttl > MAX_CACHE_TTL) {
        diags.push(Diagnostic::at(
            t,
            "cache_ttl bounds how long a lost change (a suspension) goes unseen; at most 5m",
        ));
    }
    let d = p.default.as_ref();
    let plan = match d.and_then(|d| d.plan.as_ref()) {
        None => "default".to_string(),
        Some(s)
            if !s.get_ref().is_empty()
                && s.get_ref().len() <= 40
                && s.get_ref().bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                }) =>
        {
            s.get_ref().clone()
        }
        Some(s) => {
            diags.push(Diagnostic::at(
                s,
                "plan must be a plan's name: a-z, 0-9, - and _, at most 40",
            ));
            "default".to_string()
        }
    };
    PlanSettings {
        lookup_url,
        lookup_timeout: duration_or(&p.timeout, DEFAULT_LOOKUP_TIMEOUT, diags),
        cache_ttl,
        on_policy_error: one_of(
            &p.on_policy_error,
            "on_policy_error",
            &[
                ("default", OnPolicyError::Default),
                ("refuse", OnPolicyError::Refuse),
            ],
            " (an unknown policy is never unlimited)",
            diags,
        ),
        expected_replicas: positive(&p.expected_replicas, 1, "expected_replicas", diags),
        default: DefaultPlan {
            plan,
            rate: Rate {
                limit: count(
                    &d.and_then(|d| d.requests_per_second.clone()),
                    10,
                    "requests_per_second",
                    1,
                    diags,
                ),
                burst: count(&d.and_then(|d| d.burst.clone()), 20, "burst", 0, diags),
            },
            monthly_requests: count(
                &d.and_then(|d| d.monthly_requests.clone()),
                0,
                "monthly_requests",
                0,
                diags,
            ),
        },
    }
}
