//! The rate-limit stage of the request's way: the route's policies checked in-process and, for the
//! global ones, in one Redis round trip; with an API key presented, the policies keyed by client
//! address or route only run before the key's lookup ([`early_late`]).

use crate::edge::*;

/// The route's policies `all` split for a request presenting an API key: those keyed by client address
/// or route only (checked before the key's lookup, so that a flood of made-up keys is refused without
/// reaching the backend), and the rest (checked once the key is known).
pub(in crate::edge) fn early_late(
    all: &[usize],
    specs: &[crate::config::RateLimitSpec],
) -> (Vec<usize>, Vec<usize>) {
    all.iter().partition(|&&i| {
        specs[i].key.iter().all(|k| {
            matches!(
                k,
                crate::config::KeyPart::ClientIp | crate::config::KeyPart::Route
            )
        })
    })
}

impl Gateway {
    /// The route's rate limits: the in-process tier, then one Redis round trip for the global policies
    /// and, `with_quota`, the tenant's monthly quota (in the same script call). `Ok` carries the
    /// `RateLimit-Policy` / `RateLimit` fields for the response, when they are sent.
    pub(in crate::edge) async fn check_rate_limits(
        &self,
        ctx: &RequestCtx,
        rt: &Snapshot,
        policies: &[usize],
        with_quota: bool,
    ) -> std::result::Result<Option<(String, String)>, EdgeError> {
        use ratelimit::{Outcome, Verdict};
        let Some(route) = ctx.route(rt) else {
            return Ok(None);
        };
        let quota = if with_quota {
            Self::quota_item(ctx, rt)
        } else {
            None
        };
        if policies.is_empty() && quota.is_none() {
            return Ok(None);
        }
        let specs = &rt.config.rate_limits;
        // Per-client counters: per address for IPv4, per /64 for IPv6 (one client holds a whole /64).
        let ip = ctx
            .request
            .client_ip
            .map(|i| crate::support::client_budget_key(i).to_string())
            .unwrap_or_default();
        let plan = ctx.plan.as_ref().map(|p| &*p.policy);
        let values = ratelimit::KeyValues {
            client_ip: &ip,
            tenant: ctx.request.tenant.as_deref(),
            tenant_verified: route.spec.auth.binds_tenant(),
            user: match &ctx.credential {
                Credential::Jwt(i) => Some(i.user_id.as_str()),
                _ => None,
            },
            api_key: ctx.credential.key_record().map(|r| r.id.as_str()),
            route: &route.spec.name,
            plan,
        };
        let (mut outcomes, global, mut items) =
            ratelimit::first_tier(specs, &rt.limiters, policies, &values);
        let refused_early = outcomes.iter().any(|o| !o.verdict.allowed());
        // The quota rides in the same call, after the policies' counters.
        let quota = quota.map(|(key, limit, until_month_end)| {
            items.push((key, ratelimit::gcra::Gcra::counter(limit)));
            (limit, until_month_end)
        });
        let quota_at = quota.map(|_| items.len() - 1);
        let mut quota_spent = false;
        if !items.is_empty() && !refused_early {
            let decided = match self.state.global_limits.as_ref() {
                Some(store) => match store.decide(&items).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        metrics().ratelimit_store_errors.inc();
                        if !matches!(e, crate::support::redis::StoreError::Open) {
                            tracing::warn!(error = %e, "global rate limit store unavailable; falling back");
                        }
                        None
                    }
                },
                None => None,
            };
            match decided {
                Some(ds) => {
                    for (i, d) in global.iter().zip(&ds) {
                        let rate = ratelimit::rate_of(&specs[*i], &values);
                        outcomes.push(ratelimit::global_outcome(*i, &specs[*i], rate, d));
                    }
                    quota_spent = quota_at
                        .and_then(|at| ds.get(at))
                        .is_some_and(|d| !d.allowed);
                }
                None => {
                    // The quota is not counted while Redis is away (its counts are Redis's).
                    for (i, (key, _)) in global.iter().zip(&items) {
                        outcomes.push(ratelimit::fallback_outcome(
                            *i,
                            &specs[*i],
                            &rt.limiters,
                            values.tenant,
                            key,
                        ));
                    }
                }
            }
        }
        for o in &outcomes {
            rt.limiters.count(o.policy, o.verdict);
        }
        let refused: Option<&Outcome> = outcomes
            .iter()
            .filter(|o| !o.verdict.allowed())
            .max_by_key(|o| o.retry_after);
        let plan_name = plan.map(|p| p.plan.as_str());
        let fields = ratelimit::header_fields(specs, &outcomes, plan_name);
        if let Some(o) = refused {
            let (policy_field, ratelimit_field) = fields.unwrap_or_default();
            let policy = match plan_name {
                Some(p) if specs[o.policy].plan => p.to_string(),
                _ => specs[o.policy].name.clone(),
            };
            return Err(EdgeError::RateLimited(Box::new(
                crate::edge::error::RateLimitRefusal {
                    policy,
                    retry_after_secs: ratelimit::ceil_secs(o.retry_after).max(1),
                    policy_field,
                    ratelimit_field,
                    quota: false,
                },
            )));
        }
        if let (true, Some((limit, until_month_end))) = (quota_spent, quota) {
            metrics()
                .quota_refusals
                .with_label_values(&["quota_exceeded"])
                .inc();
            let name = format!("{}-monthly", plan_name.unwrap_or("plan"));
            return Err(EdgeError::RateLimited(Box::new(
                crate::edge::error::RateLimitRefusal {
                    policy: plan_name.unwrap_or("plan").to_string(),
                    retry_after_secs: until_month_end,
                    policy_field: format!("\"{name}\";q={limit};w=2592000"),
                    ratelimit_field: format!("\"{name}\";r=0;t={until_month_end}"),
                    quota: true,
                },
            )));
        }
        let binding = outcomes.iter().min_by_key(|o| o.remaining);
        if binding.is_some_and(|o| specs[o.policy].headers && o.verdict != Verdict::FailOpen) {
            return Ok(fields);
        }
        Ok(None)
    }
}
