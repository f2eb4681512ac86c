//! `[rate_limits.NAME]` policies, validated.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::duration::parse_duration;
use super::file::{KeyFile, RateLimitFile};
use super::Diagnostic;

/// What a policy counts by. A part the request does not have (`user` on an anonymous request) is replaced
/// by the client address, so anonymous callers are limited one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Tenant,
    User,
    ApiKey,
    Route,
}

/// Where a policy's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In Redis: one limit for every gateway replica.
    Global,
    /// In this process.
    Local,
}

/// What a global policy does while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// A local limiter sized `limit / expected_replicas` decides.
    Local,
    /// Every request passes.
    Open,
    /// Every request is refused (429).
    Closed,
}

/// `limit` requests per period, plus `burst` more at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub burst: u64,
}

#[derive(Debug, Clone)]
pub struct RateLimitSpec {
    pub name: String,
    pub key: Vec<KeyPart>,
    pub rate: Rate,
    pub period: Duration,
    pub scope: Scope,
    pub fail: FailMode,
    pub expected_replicas: u64,
    /// Whether allowed responses carry `RateLimit` / `RateLimit-Policy`.
    pub headers: bool,
    /// Per-tenant rates (a tenant on a bigger plan).
    pub overrides: HashMap<String, Rate>,
    /// The built-in `plan` policy: the rate is the tenant's plan's (`[plans]`), `rate` only the
    /// default plan's.
    pub plan: bool,
}

impl RateLimitSpec {
    /// The rate that applies to `tenant`.
    pub fn rate_for(&self, tenant: Option<&str>) -> Rate {
        tenant
            .and_then(|t| self.overrides.get(t))
            .copied()
            .unwrap_or(self.rate)
    }
}

/// The name of the built-in rate limit a route lists to apply the tenant's plan (`[plans]`).
pub const PLAN_POLICY: &str = "plan";

/// Largest `limit` or `burst` accepted (keeps the arithmetic far from overflow).
const MAX_COUNT: i64 = 1_000_000_000;

fn count(v: &toml::Spanned<i64>, what: &str, min: i64, diags: &mut Vec<Diagnostic>) -> Option<u64> {
    let n = *v.get_ref();
    if (min..=MAX_COUNT).contains(&n) {
        Some(n as u64)
    } else {
        diags.push(Diagnostic::at(
            v,
            format!("{what} must be between {min} and {MAX_COUNT}"),
        ));
        None
    }
}

fn key_part<T>(s: &str, at: &toml::Spanned<T>, diags: &mut Vec<Diagnostic>) -> Option<KeyPart> {
    super::pick(
        s,
        at.span(),
        "key",
        &[
            ("client_ip", KeyPart::ClientIp),
            ("tenant", KeyPart::Tenant),
            ("user", KeyPart::User),
            ("api_key", KeyPart::ApiKey),
            ("route", KeyPart::Route),
        ],
        "",
        diags,
    )
}

pub(super) fn validate(
    raw: &BTreeMap<String, RateLimitFile>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<RateLimitSpec> {
    let mut out = Vec::new();
    for (name, p) in raw {
        if name == PLAN_POLICY {
            diags.push(Diagnostic::at(
                &p.limit,
                "the rate limit name `plan` is built in (the tenant's plan, from [plans]); choose another name",
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            diags.push(Diagnostic::at(
                &p.limit,
                format!("rate limit name `{name}` may hold only letters, digits, `-` and `_`"),
            ));
        }
        let mut key = Vec::new();
        match p.key.get_ref() {
            KeyFile::One(s) => key.extend(key_part(s, &p.key, diags)),
            KeyFile::Many(list) => {
                for s in list {
                    if let Some(k) = key_part(s, &p.key, diags) {
                        if key.contains(&k) {
                            diags.push(Diagnostic::at(
                                &p.key,
                                format!("key part `{s}` listed twice"),
                            ));
                        }
                        key.push(k);
                    }
                }
                if list.is_empty() {
                    diags.push(Diagnostic::at(&p.key, "key must name at least one part"));
                }
            }
        }
        let limit = count(&p.limit, "limit", 1, diags).unwrap_or(1);
        let burst = p
            .burst
            .as_ref()
            .and_then(|b| count(b, "burst", 0, diags))
            .unwrap_or(0);
        let period = match parse_duration(p.period.get_ref()) {
            Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(86_400) => d,
            Ok(_) => {
                diags.push(Diagnostic::at(
                    &p.period,
                    "period must be between 1ms and 24h",
                ));
                Duration::from_secs(1)
            }
            Err(e) => {
                diags.push(Diagnostic::at(&p.period, e));
                Duration::from_secs(1)
            }
        };
        if period.as_micros() / u128::from(limit) == 0 {
            diags.push(Diagnostic::at(
                &p.limit,
                "limit is too high for the period (more than one request per microsecond)",
            ));
        }
        let scope = super::one_of(
            &p.scope,
            "scope",
            &[("global", Scope::Global), ("local", Scope::Local)],
            "",
            diags,
        );
        let fail = super::one_of(
            &p.fail,
            "fail",
            &[
                ("local", FailMode::Local),
                ("open", FailMode::Open),
                ("closed", FailMode::Closed),
            ],
            "",
            diags,
        );
        let expected_replicas = p
            .expected_replicas
            .as_ref()
            .and_then(|r| count(r, "expected_replicas", 1, diags))
            .unwrap_or(1);
        let mut overrides = HashMap::new();
        for (tenant, o) in &p.overrides {
            let o = o.get_ref();
            let limit = count(&o.limit, "limit", 1, diags).unwrap_or(1);
            let burst = o
                .burst
                .as_ref()
                .and_then(|b| count(b, "burst", 0, diags))
                .unwrap_or(0);
            overrides.insert(tenant.to_ascii_lowercase(), Rate { limit, burst });
        }
        out.push(RateLimitSpec {
            name: name.clone(),
            key,
            rate: Rate { limit, burst },
            period,
            scope,
            fail,
            expected_replicas,
            headers: p.headers.unwrap_or(true),
            overrides,
            plan: false,
        });
    }
    out
}
