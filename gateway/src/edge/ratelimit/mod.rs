//! Rate limits: a first tier in process (`governor`) and one limit for the whole fleet in Redis.
//!
//! Per request, for the route's policies in order:
//! 1. `local` policies are decided by an in-process GCRA (governor), keyed like the policy;
//! 2. `global` policies first pass a shed-early guard — an in-process limiter at [`SHED_FACTOR`] × the
//!    fleet's quota, which refuses an obvious flood without asking Redis — then are decided together by
//!    one Lua script in one Redis round trip ([`global`]);
//! 3. when Redis cannot answer (timeout, down, circuit open), each global policy falls back to its `fail`
//!    mode: a local limiter sized `limit / expected_replicas`, open, or closed.
//!
//! A refused request never reaches a backend: it gets 429 with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit`.

pub mod gcra;
pub mod global;
pub(in crate::edge) mod stage;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};

use crate::config::{Rate, RateLimitSpec, Scope};
use gcra::Gcra;

/// The shed-early guard refuses a key only past this multiple of its fleet-wide quota, seen by this one
/// process: far past what Redis would allow anyway.
pub const SHED_FACTOR: u64 = 2;

type Keyed = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// A governor limiter per rate (the policy's, and each tenant override's).
struct LocalTier {
    default: Keyed,
    overrides: HashMap<String, Keyed>,
}

fn quota(rate: Rate, period: Duration, divisor: u64, factor: u64) -> Quota {
    let limit = (rate.limit * factor / divisor).max(1);
    let burst = rate.burst * factor / divisor;
    let interval = (period / u32::try_from(limit).unwrap_or(u32::MAX)).max(Duration::from_nanos(1));
    let cap = u32::try_from(limit + burst)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(cap)
}

impl LocalTier {
    fn new(spec: &RateLimitSpec, divisor: u64, factor: u64) -> LocalTier {
        LocalTier {
            default: RateLimiter::keyed(quota(spec.rate, spec.period, divisor, factor))
                .with_middleware::<StateInformationMiddleware>(),
            overrides: spec
                .overrides
                .iter()
                .map(|(t, r)| {
                    (
                        t.clone(),
                        RateLimiter::keyed(quota(*r, spec.period, divisor, factor))
                            .with_middleware::<StateInformationMiddleware>(),
                    )
                })
                .collect(),
        }
    }

    fn check(&self, tenant: Option<&str>, key: &String) -> LocalOutcome {
        let l = tenant
            .and_then(|t| self.overrides.get(t))
            .unwrap_or(&self.default);
        match l.check_key(key) {
            Ok(snap) => LocalOutcome {
                allowed: true,
                remaining: u64::from(snap.remaining_burst_capacity()),
                retry_after: Duration::ZERO,
            },
            Err(not_until) => LocalOutcome {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }

    fn forget_idle(&self) {
        self.default.retain_recent();
        for l in self.overrides.values() {
            l.retain_recent();
        }
    }
}

struct LocalOutcome {
    allowed: bool,
    remaining: u64,
    retry_after: Duration,
}

/// The in-process limiters of one policy.
pub struct PolicyLimiters {
    /// `local` scope: the policy itself. `global` scope: the fallback while Redis is away.
    local: LocalTier,
    /// `global` scope only: the shed-early guard.
    shed: Option<LocalTier>,
}

/// The in-process state of every policy of a config.
pub struct Limiters {
    pub policies: Vec<PolicyLimiters>,
    /// `gateway_ratelimit_decisions_total{policy,decision}`, bound once per policy and verdict (a label
    /// lookup per request would cost more than the local decision itself).
    decisions: Vec<[prometheus::IntCounter; VERDICTS.len()]>,
}

impl Limiters {
    pub fn new(specs: &[RateLimitSpec]) -> Limiters {
        let m = crate::telemetry::metrics::metrics();
        Limiters {
            decisions: specs
                .iter()
                .map(|s| {
                    VERDICTS.map(|v| {
                        m.ratelimit_decisions
                            .with_label_values(&[&s.name, v.label()])
                    })
                })
                .collect(),
            policies: specs
                .iter()
                .map(|s| match s.scope {
                    Scope::Local => PolicyLimiters {
                        local: LocalTier::new(s, 1, 1),
                        shed: None,
                    },
                    Scope::Global => PolicyLimiters {
                        local: LocalTier::new(s, s.expected_replicas, 1),
                        shed: Some(LocalTier::new(s, 1, SHED_FACTOR)),
                    },
                })
                .collect(),
        }
    }

    /// Counts one decision of policy `i`.
    pub fn count(&self, i: usize, v: Verdict) {
        if let Some(c) = self.decisions.get(i) {
            c[v as usize].inc();
        }
    }

    /// Drops the state of keys that are back to full capacity (bounds memory under many distinct keys).
    pub fn forget_idle(&self) {
        for p in &self.policies {
            p.local.forget_idle();
            if let Some(s) = &p.shed {
                s.forget_idle();
            }
        }
    }
}

/// Every verdict, in declaration order (indexes [`Limiters`]' counters).
const VERDICTS: [Verdict; 7] = [
    Verdict::Allowed,
    Verdict::Refused,
    Verdict::Shed,
    Verdict::FallbackAllowed,
    Verdict::FallbackRefused,
    Verdict::FailOpen,
    Verdict::FailClosed,
];

/// How a policy decided; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused,
    /// Refused by the shed-early guard, without asking Redis.
    Shed,
    /// Decided by the local fallback while Redis was unavailable.
    FallbackAllowed,
    FallbackRefused,
    /// Redis unavailable and the policy fails open / closed.
    FailOpen,
    FailClosed,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Refused => "refused",
            Verdict::Shed => "shed",
            Verdict::FallbackAllowed => "fallback_allowed",
            Verdict::FallbackRefused => "fallback_refused",
            Verdict::FailOpen => "fail_open",
            Verdict::FailClosed => "fail_closed",
        }
    }

    pub fn allowed(self) -> bool {
        matches!(
            self,
            Verdict::Allowed | Verdict::FallbackAllowed | Verdict::FailOpen
        )
    }
}

/// One policy's outcome, for the metrics and the `RateLimit` fields.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub policy: usize,
    pub verdict: Verdict,
    /// The quota in force (`q` of `RateLimit-Policy`).
    pub quota: u64,
    pub window: Duration,
    pub remaining: u64,
    pub retry_after: Duration,
    pub reset: Duration,
}

/// The counter key of a policy for one request.
pub fn counter_key(policy: &RateLimitSpec, parts: &KeyValues<'_>) -> String {
    use crate::config::KeyPart;
    let mut k = String::with_capacity(64);
    k.push_str(&policy.name);
    for p in &policy.key {
        k.push(':');
        let v = match p {
            KeyPart::ClientIp => None,
            // The host's tenant on a route that did not verify it (anonymous callers, or a token of
            // any tenant): counted per route, so that a flood of such requests spends only that
            // route's share and never the budget of the tenant's authenticated calls elsewhere.
            KeyPart::Tenant if !parts.tenant_verified => {
                if let Some(t) = parts.tenant {
                    k.push_str(t);
                    k.push('@');
                    k.push_str(parts.route);
                    continue;
                }
                None
            }
            KeyPart::Tenant => parts.tenant,
            KeyPart::User => parts.user,
            KeyPart::ApiKey => parts.api_key,
            KeyPart::Route => Some(parts.route),
        };
        match v {
            Some(v) => k.push_str(v),
            None => {
                k.push_str("ip=");
                k.push_str(parts.client_ip);
            }
        }
    }
    k
}

/// What a request offers to key its counters by.
pub struct KeyValues<'a> {
    pub client_ip: &'a str,
    pub tenant: Option<&'a str>,
    /// Whether the route's auth bound the caller to `tenant` (a tenant-bound token or the tenant's API
    /// key); otherwise `tenant` is only what the Host says.
    pub tenant_verified: bool,
    pub user: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub route: &'a str,
    /// The tenant's plan (with `[plans]`): the rate of the built-in `plan` policy.
    pub plan: Option<&'a contracts::plans::TenantPolicy>,
}

/// The rate of `spec` for a request: the tenant's plan's for the built-in `plan` policy (the default
/// plan's while it is unknown), else the policy's own or its tenant override.
pub fn rate_of(spec: &RateLimitSpec, values: &KeyValues<'_>) -> Rate {
    match (spec.plan, values.plan) {
        (true, Some(p)) => Rate {
            limit: p.requests_per_second.max(1),
            burst: p.burst,
        },
        _ => spec.rate_for(values.tenant),
    }
}

/// Decides `local` policies and the shed-early guard of `global` ones; returns the outcomes of local
/// policies, then the global policies still to ask Redis about: their indexes, and beside them their
/// (counter key, parameters), ready for [`global::GlobalStore::decide`].
#[allow(clippy::type_complexity)]
pub fn first_tier(
    specs: &[RateLimitSpec],
    limiters: &Limiters,
    route_policies: &[usize],
    values: &KeyValues<'_>,
) -> (Vec<Outcome>, Vec<usize>, Vec<(String, Gcra)>) {
    let mut outcomes = Vec::new();
    let mut global = Vec::new();
    let mut items = Vec::new();
    for &i in route_policies {
        let (Some(spec), Some(lim)) = (specs.get(i), limiters.policies.get(i)) else {
            continue;
        };
        let rate = rate_of(spec, values);
        let key = counter_key(spec, values);
        match spec.scope {
            Scope::Local => {
                let o = lim.local.check(values.tenant, &key);
                outcomes.push(local_outcome(
                    i,
                    spec,
                    rate,
                    &o,
                    Verdict::Allowed,
                    Verdict::Refused,
                ));
            }
            Scope::Global => {
                // The shed guard is sized on one rate; the plan's varies by tenant (it is skipped).
                if let Some(shed) = lim.shed.as_ref().filter(|_| !spec.plan) {
                    let o = shed.check(values.tenant, &key);
                    if !o.allowed {
                        outcomes.push(local_outcome(
                            i,
                            spec,
                            rate,
                            &o,
                            Verdict::Shed,
                            Verdict::Shed,
                        ));
                        continue;
                    }
                }
                global.push(i);
                items.push((key, Gcra::new(rate, spec.period)));
            }
        }
    }
    (outcomes, global, items)
}

fn local_outcome(
    i: usize,
    spec: &RateLimitSpec,
    rate: Rate,
    o: &LocalOutcome,
    yes: Verdict,
    no: Verdict,
) -> Outcome {
    Outcome {
        policy: i,
        verdict: if o.allowed { yes } else { no },
        quota: rate.limit,
        window: spec.period,
        remaining: o.remaining,
        retry_after: o.retry_after,
        reset: o.retry_after,
    }
}

/// The outcome of a global policy decided by Redis.
pub fn global_outcome(i: usize, spec: &RateLimitSpec, rate: Rate, d: &gcra::Decision) -> Outcome {
    Outcome {
        policy: i,
        verdict: if d.allowed {
            Verdict::Allowed
        } else {
            Verdict::Refused
        },
        quota: rate.limit,
        window: spec.period,
        remaining: d.remaining,
        retry_after: Duration::from_micros(d.retry_after_us),
        reset: Duration::from_micros(d.reset_us),
    }
}

/// The outcome of a global policy while Redis cannot answer.
pub fn fallback_outcome(
    i: usize,
    spec: &RateLimitSpec,
    limiters: &Limiters,
    tenant: Option<&str>,
    key: &String,
) -> Outcome {
    use crate::config::FailMode;
    let rate = spec.rate_for(tenant);
    match spec.fail {
        FailMode::Local => match limiters.policies.get(i) {
            Some(l) => {
                let o = l.local.check(tenant, key);
                local_outcome(
                    i,
                    spec,
                    rate,
                    &o,
                    Verdict::FallbackAllowed,
                    Verdict::FallbackRefused,
                )
            }
            None => fail(i, spec, rate, Verdict::FailOpen),
        },
        FailMode::Open => fail(i, spec, rate, Verdict::FailOpen),
        FailMode::Closed => fail(i, spec, rate, Verdict::FailClosed),
    }
}

fn fail(i: usize, spec: &RateLimitSpec, rate: Rate, verdict: Verdict) -> Outcome {
    let one = Duration::from_secs(1);
    Outcome {
        policy: i,
        verdict,
        quota: rate.limit,
        window: spec.period,
        remaining: 0,
        retry_after: one,
        reset: one,
    }
}

/// Whole seconds, rounded up (header fields carry integers).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for the outcome that binds:
/// a refusing one, else the one with the fewest requests left. The built-in `plan` policy is named by
/// the tenant's plan (`plan`).
pub fn header_fields(
    specs: &[RateLimitSpec],
    outcomes: &[Outcome],
    plan: Option<&str>,
) -> Option<(String, String)> {
    let o = outcomes
        .iter()
        .filter(|o| !o.verdict.allowed())
        .max_by_key(|o| o.retry_after)
        .or_else(|| outcomes.iter().min_by_key(|o| o.remaining))?;
    let spec = specs.get(o.policy)?;
    let name = match plan {
        Some(p) if spec.plan => p,
        _ => spec.name.as_str(),
    };
    Some((
        format!("\"{name}\";q={};w={}", o.quota, ceil_secs(o.window).max(1)),
        format!("\"{name}\";r={};t={}", o.remaining, ceil_secs(o.reset)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FailMode, KeyPart};

    fn spec(scope: Scope, limit: u64, burst: u64) -> RateLimitSpec {
        RateLimitSpec {
            name: "p".into(),
            key: vec![KeyPart::Tenant, KeyPart::User],
            rate: Rate { limit, burst },
            period: Duration::from_secs(60),
            scope,
            fail: FailMode::Local,
            expected_replicas: 2,
            headers: true,
            overrides: [(
                "big".to_string(),
                Rate {
                    limit: 10,
                    burst: 0,
                },
            )]
            .into(),
            plan: false,
        }
    }

    fn values<'a>(tenant: Option<&'a str>) -> KeyValues<'a> {
        KeyValues {
            client_ip: "10.0.0.1",
            tenant,
            tenant_verified: true,
            user: None,
            api_key: None,
            route: "r",
            plan: None,
        }
    }

    #[test]
    fn keys_fall_back_to_the_client_address() {
        let s = spec(Scope::Local, 1, 0);
        assert_eq!(counter_key(&s, &values(Some("acme"))), "p:acme:ip=10.0.0.1");
    }

    #[test]
    fn an_unverified_tenant_is_counted_per_route() {
        let s = spec(Scope::Local, 1, 0);
        let anonymous = KeyValues {
            tenant_verified: false,
            ..values(Some("acme"))
        };
        assert_eq!(counter_key(&s, &anonymous), "p:acme@r:ip=10.0.0.1");
        assert_ne!(
            counter_key(&s, &anonymous),
            counter_key(&s, &values(Some("acme")))
        );
    }

    #[test]
    fn local_policies_and_overrides() {
        let specs = vec![spec(Scope::Local, 2, 1)];
        let l = Limiters::new(&specs);
        let count = |tenant| {
            (0..20)
                .filter(|_| {
                    let (o, g, _) = first_tier(&specs, &l, &[0], &values(Some(tenant)));
                    assert!(g.is_empty());
                    o[0].verdict.allowed()
                })
                .count()
        };
        assert_eq!(count("acme"), 3, "limit + burst");
        assert_eq!(count("globex"), 3, "tenants have their own counters");
        assert_eq!(count("big"), 10, "the override");
    }

    #[test]
    fn fallback_is_sized_per_replica_and_shed_guard_is_generous() {
        let specs = vec![spec(Scope::Global, 10, 0)];
        let l = Limiters::new(&specs);
        let key = "k".to_string();
        let allowed = (0..30)
            .filter(|_| {
                fallback_outcome(0, &specs[0], &l, Some("acme"), &key)
                    .verdict
                    .allowed()
            })
            .count();
        assert_eq!(allowed, 5, "10 / expected_replicas 2");
        let passed = (0..100)
            .filter(|_| first_tier(&specs, &l, &[0], &values(Some("acme"))).2.len() == 1)
            .count();
        assert_eq!(
            passed as u64,
            10 * SHED_FACTOR,
            "sent to Redis up to twice the quota"
        );
    }

    #[test]
    fn header_fields_name_the_binding_policy() {
        let specs = vec![spec(Scope::Local, 5, 0)];
        let o = Outcome {
            policy: 0,
            verdict: Verdict::Refused,
            quota: 5,
            window: Duration::from_secs(60),
            remaining: 0,
            retry_after: Duration::from_millis(1500),
            reset: Duration::from_millis(2500),
        };
        assert_eq!(
            header_fields(&specs, &[o], None),
            Some(("\"p\";q=5;w=60".to_string(), "\"p\";r=0;t=3".to_string()))
        );
    }
}
