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
    /// The route's rate limits: the in-process tier, then one Redis round trip for the global policies.
    /// `Ok` carries the `RateLimit-Policy` / `RateLimit` fields for the response, when they are sent.
    pub(in crate::edge) async fn check_rate_limits(
        &self,
        ctx: &RequestCtx,
        rt: &Snapshot,
        policies: &[usize],
    ) -> std::result::Result<Option<(String, String)>, EdgeError> {
        use ratelimit::{Outcome, Verdict};
        let Some(route) = ctx.route(rt) else {
            return Ok(None);
        };
        if policies.is_empty() {
            return Ok(None);
        }
        let specs = &rt.config.rate_limits;
        // Per-client counters: per address for IPv4, per /64 for IPv6 (one client holds a whole /64).
        let ip = ctx
            .request
            .client_ip
            .map(|i| crate::support::client_budget_key(i).to_string())
            .unwrap_or_default();
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
        };
        let (mut outcomes, global, items) =
            ratelimit::first_tier(specs, &rt.limiters, policies, &values);
        let refused_early = outcomes.iter().any(|o| !o.verdict.allowed());
        if !global.is_empty() && !refused_early {
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
                        let rate = specs[*i].rate_for(values.tenant);
                        outcomes.push(ratelimit::global_outcome(*i, &specs[*i], rate, d));
                    }
                }
                None => {
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
        let fields = ratelimit::header_fields(specs, &outcomes);
        if let Some(o) = refused {
            let (policy_field, ratelimit_field) = fields.unwrap_or_default();
            return Err(EdgeError::RateLimited(Box::new(
                crate::edge::error::RateLimitRefusal {
                    policy: specs[o.policy].name.clone(),
                    retry_after_secs: ratelimit::ceil_secs(o.retry_after).max(1),
                    policy_field,
                    ratelimit_field,
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
