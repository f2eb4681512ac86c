//! The plan stage of the request's way: once the tenant is known (host, token or API key), its policy
//! (cached) decides whether it is served at all; the rate-limit stage then applies its rate and monthly
//! quota ([`Gateway::quota_item`]).

use crate::edge::*;

/// The monthly quota's counter for a tenant with no quota: still counted (usage is shown), never
/// reached (exact in Lua's doubles).
const UNLIMITED: u64 = 1 << 52;

impl Gateway {
    /// Fetches the tenant's policy into `ctx.plan`; refuses a suspended tenant (403) and, with
    /// `on_policy_error = "refuse"`, a tenant whose policy cannot be fetched (503).
    pub(in crate::edge) async fn check_plan(
        &self,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let (Some(store), Some(tenant)) = (rt.plans.as_ref(), ctx.request.tenant.as_deref()) else {
            return Ok(());
        };
        match store.resolve(tenant).await {
            Ok(r) if r.policy.suspended => {
                metrics()
                    .quota_refusals
                    .with_label_values(&["tenant_suspended"])
                    .inc();
                Err(EdgeError::TenantSuspended)
            }
            Ok(r) => {
                ctx.plan = Some(r);
                Ok(())
            }
            Err(()) => {
                metrics()
                    .quota_refusals
                    .with_label_values(&["policy_unavailable"])
                    .inc();
                Err(EdgeError::PolicyUnavailable)
            }
        }
    }

    /// The tenant's monthly counter for this request, when its route counts (`quota`) and the tenant's
    /// own policy is known: (Redis key, limit, seconds until the month ends).
    pub(in crate::edge) fn quota_item(
        ctx: &RequestCtx,
        rt: &Snapshot,
    ) -> Option<(String, u64, u64)> {
        rt.plans.as_ref()?;
        let route = ctx.route(rt)?;
        if !route.spec.quota {
            return None;
        }
        let plan = ctx.plan.as_ref()?;
        if plan.source != plan::Source::Tenant {
            return None;
        }
        let now = crate::support::unix_now() as u64;
        let limit = match plan.policy.monthly_requests {
            0 => UNLIMITED,
            n => n.min(UNLIMITED),
        };
        let (key, ends) = match plan.month.as_deref().filter(|m| now < m.ends) {
            Some(m) => (m.key.clone(), m.ends),
            None => {
                let m = plan::MonthKey::of(&plan.policy.tenant, now);
                (m.key, m.ends)
            }
        };
        Some((key, limit, ends.saturating_sub(now).max(1)))
    }
}
