//! On-demand certificates for tenants' own domains (`tenants.domain`).
//!
//! A handshake for a name that no certificate covers asks the backend whether an active tenant owns it
//! (`[tls.on_demand] ask`, cached for `cache_ttl`, yes and no alike, at most `cache_size` names with the
//! least recently used evicted; concurrent asks for one name are one request). Asks for names not in
//! the cache are bounded: `asks_per_second` in all, and `client_asks_per_minute` per client address
//! (per /64 for IPv6), so random SNI names cost neither memory nor backend queries without bound. Only a yes can lead to an ACME order, and orders are bounded: at most
//! `max_concurrent_orders` at once and `orders_per_minute`. The first handshake waits up to `wait` for
//! the certificate, then goes on (and fails cleanly if it is still missing); the order itself goes on
//! in the background and serves the next handshake.
//!
//! A failing name cannot spend the budget of others: after a failed order, that name waits (the
//! renewal backoff, `[tls.acme] retry_initial` doubling up to `retry_max`) before any new order, however
//! many handshakes ask for it; each tenant has its own hourly order budget
//! (`tenant_orders_per_hour`); and on-demand orders together stay within `orders_per_hour`, so that the
//! rest of the ACME account's budget at the CA is kept for the configured domains' renewals (those never
//! count against these bounds).
//!
//! The owning tenant is remembered per domain, so that requests on the domain are routed as that
//! tenant's ([`OnDemand::tenant_of`], one atomic load per request).

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::AcmeClient;
use crate::config::{AcmeSettings, OnDemandSettings};
use crate::support::single_flight::SingleFlight;
use crate::telemetry::metrics::metrics;

/// Asks to the backend in flight at once; more handshakes for unknown names are refused meanwhile
/// (a flood of made-up names must not become a flood of backend queries).
const MAX_CONCURRENT_ASKS: usize = 32;

/// What the ask endpoint said about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// An active tenant owns it.
    Tenant(String),
    /// No active tenant owns it.
    Nobody,
    /// The endpoint could not answer (not cached).
    Unknown,
    /// Not asked: the ask budget (all clients', or this client's) is spent (not cached).
    Throttled,
}

struct Cached {
    answer: Ownership,
    at: Instant,
    used: Instant,
}

/// The ask endpoint's answers by name: expired on read after the TTL, and at most `cap` names (the
/// expired first, then the least recently used make room).
#[derive(Default)]
struct AnswerCache {
    map: HashMap<String, Cached>,
}

impl AnswerCache {
    fn get(&mut self, name: &str, ttl: Duration) -> Option<Ownership> {
        let now = Instant::now();
        match self.map.get_mut(name) {
            Some(c) if now.duration_since(c.at) < ttl => {
                c.used = now;
                Some(c.answer.clone())
            }
            Some(_) => {
                self.map.remove(name);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, name: &str, answer: Ownership, ttl: Duration, cap: usize) {
        let now = Instant::now();
        if self.map.len() >= cap && !self.map.contains_key(name) {
            self.map.retain(|_, c| now.duration_since(c.at) < ttl);
            // Inserts are bounded by the ask rate, so one scan per insert stays cheap.
            while self.map.len() >= cap.max(1) {
                let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, c)| c.used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                self.map.remove(&oldest);
            }
        }
        self.map.insert(
            name.to_string(),
            Cached {
                answer,
                at: now,
                used: now,
            },
        );
    }

    fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Ask budgets, rebuilt when the settings change.
struct AskBounds {
    settings: OnDemandSettings,
    global: DefaultDirectRateLimiter,
    per_client: DefaultKeyedRateLimiter<std::net::IpAddr>,
}

/// Keys (client addresses, tenants) a keyed budget remembers before idle ones are dropped.
const MAX_KEYED: usize = 10_000;

/// Names remembered with a failed order at most; beyond it, entries whose wait is over go first, then
/// the table refuses new names' orders until some wait ends (only names a tenant owns get here).
const MAX_FAILING_NAMES: usize = 10_000;

/// Order bounds, rebuilt when the settings change.
struct Bounds {
    settings: OnDemandSettings,
    rate: DefaultDirectRateLimiter,
    hourly: DefaultDirectRateLimiter,
    per_tenant: DefaultKeyedRateLimiter<String>,
    orders: Arc<Semaphore>,
}

/// A name whose last order failed: no new order before `retry_at`.
struct Failing {
    failures: u32,
    retry_at: Instant,
}

/// On-demand certificates: the ask cache, the order bounds, and the domains issued so far.
pub struct OnDemand {
    config: Arc<dyn crate::config::Live>,
    client: Arc<AcmeClient>,
    answers: Mutex<AnswerCache>,
    ask_bounds: Mutex<Option<Arc<AskBounds>>>,
    asking: SingleFlight<Ownership>,
    ask_slots: Semaphore,
    /// Domain → tenant for routing; copied on write (writes happen at handshakes, rarely).
    domains: ArcSwap<HashMap<String, String>>,
    bounds: Mutex<Option<Arc<Bounds>>>,
    /// Orders in flight: the handshakes waiting for one watch it.
    pending: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    issued: Mutex<BTreeSet<String>>,
    failing: Mutex<HashMap<String, Failing>>,
}

fn decision(label: &str) {
    metrics().tls_on_demand.with_label_values(&[label]).inc();
}

impl OnDemand {
    pub fn new(config: Arc<dyn crate::config::Live>, client: Arc<AcmeClient>) -> OnDemand {
        OnDemand {
            config,
            client,
            answers: Mutex::default(),
            ask_bounds: Mutex::default(),
            asking: SingleFlight::default(),
            ask_slots: Semaphore::new(MAX_CONCURRENT_ASKS),
            domains: ArcSwap::default(),
            bounds: Mutex::default(),
            pending: Mutex::default(),
            issued: Mutex::default(),
            failing: Mutex::default(),
        }
    }

    /// Whether `name` is waiting out the backoff of a failed order.
    fn backing_off(&self, name: &str) -> bool {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing
            .get(name)
            .is_some_and(|f| Instant::now() < f.retry_at)
    }

    /// Records the outcome of an order for `name`: a failure starts (or doubles) its wait.
    fn order_done(&self, name: &str, ok: bool, acme: &AcmeSettings) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failing.remove(name);
            return;
        }
        let now = Instant::now();
        if failing.len() >= MAX_FAILING_NAMES && !failing.contains_key(name) {
            failing.retain(|_, f| f.retry_at > now);
        }
        if failing.len() >= MAX_FAILING_NAMES && !failing.contains_key(name) {
            return;
        }
        let f = failing.entry(name.to_string()).or_insert(Failing {
            failures: 0,
            retry_at: now,
        });
        f.failures = f.failures.saturating_add(1);
        f.retry_at = now + super::backoff(f.failures, acme.retry_initial, acme.retry_max);
    }

    fn settings(&self) -> Option<(AcmeSettings, OnDemandSettings)> {
        let config = self.config.config();
        let tls = config.tls.as_ref()?;
        Some((tls.acme.clone()?, tls.on_demand.clone()?))
    }

    /// Whether `[tls.on_demand]` is on in the current config.
    pub fn enabled(&self) -> bool {
        self.settings().is_some()
    }

    /// The tenant that owns `host`, when a handshake for it was allowed.
    pub fn tenant_of(&self, host: &str) -> Option<String> {
        self.domains.load().get(host).cloned()
    }

    /// The host a tenant's own domain is routed as: `{tenant}.{first base domain}`.
    pub fn routed_as(&self, host: &str) -> Option<String> {
        let tenant = self.tenant_of(host)?;
        let config = self.config.config();
        let base = config.tenancy.base_domains.first()?;
        Some(format!("{tenant}.{base}"))
    }

    /// Domains with an on-demand certificate (renewed by the ACME manager).
    pub fn issued_names(&self) -> Vec<String> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.iter().cloned().collect()
    }

    /// Stops renewing `name` and routing it as a tenant's.
    pub fn forget(&self, name: &str) {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let mut map = (**self.domains.load()).clone();
        if map.remove(name).is_some() {
            self.domains.store(Arc::new(map));
        }
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// A fresh answer for `name` (renewals ask again, whatever the cache holds).
    pub async fn still_allowed(&self, name: &str) -> Option<bool> {
        let Some((_, od)) = self.settings() else {
            return Some(false);
        };
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match self.ownership(name, &od, None).await {
            Ownership::Tenant(_) => Some(true),
            Ownership::Nobody => Some(false),
            Ownership::Unknown | Ownership::Throttled => None,
        }
    }

    /// Names whose ask answer is cached now.
    pub fn cached_answers(&self) -> usize {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Called during a handshake from `client` for `name`, which no certificate covers: asks, and
    /// orders when a tenant owns it. Returns within `wait` (the order may go on in the background).
    pub async fn ensure(self: &Arc<Self>, name: &str, client: Option<std::net::IpAddr>) {
        let Some((acme, od)) = self.settings() else {
            return;
        };
        // A name whose order just failed is not asked about nor ordered again before its wait ends:
        // hammering it costs nothing but this look-up.
        if self.backing_off(name) {
            decision("backoff");
            return;
        }
        let tenant = match self.ownership(name, &od, client).await {
            Ownership::Tenant(t) => t,
            Ownership::Nobody => {
                decision("denied");
                return;
            }
            Ownership::Unknown => {
                decision("ask_failed");
                return;
            }
            Ownership::Throttled => {
                decision("ask_throttled");
                return;
            }
        };
        decision("allowed");
        self.remember(name, &tenant);
        // A certificate from an earlier run, or from another replica.
        if let Ok(storage) = self.client.storage(&acme) {
            self.client.load_stored(&storage, name).await;
        }
        if self.client.store().acme(name).is_some() {
            self.adopt(name, &tenant);
            return;
        }
        let Some(mut done) = self.start_order(name, &tenant, &acme, &od) else {
            return;
        };
        let _ = tokio::time::timeout(od.wait, done.wait_for(|finished| *finished)).await;
    }

    /// A certificate for a tenant's domain that another replica ordered: route and renew it here too.
    pub fn adopt(&self, name: &str, tenant: &str) {
        self.remember(name, tenant);
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
    }

    fn remember(&self, name: &str, tenant: &str) {
        if self.domains.load().get(name).map(String::as_str) != Some(tenant) {
            let mut map = (**self.domains.load()).clone();
            map.insert(name.to_string(), tenant.to_string());
            self.domains.store(Arc::new(map));
        }
    }

    /// The order for `name`: joins one in flight, or starts one within the bounds.
    fn start_order(
        self: &Arc<Self>,
        name: &str,
        tenant: &str,
        acme: &AcmeSettings,
        od: &OnDemandSettings,
    ) -> Option<tokio::sync::watch::Receiver<bool>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = pending.get(name) {
            return Some(rx.clone());
        }
        if self.backing_off(name) {
            decision("backoff");
            return None;
        }
        let bounds = self.bounds(od);
        let Ok(permit) = Arc::clone(&bounds.orders).try_acquire_owned() else {
            decision("throttled");
            return None;
        };
        // The tenant's own budget first: a tenant spending its budget leaves the others' intact.
        if bounds.per_tenant.len() > MAX_KEYED {
            bounds.per_tenant.retain_recent();
        }
        if bounds.per_tenant.check_key(&tenant.to_string()).is_err() {
            decision("tenant_throttled");
            return None;
        }
        if bounds.rate.check().is_err() || bounds.hourly.check().is_err() {
            decision("throttled");
            return None;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        pending.insert(name.to_string(), rx.clone());
        // The order outlives the handshake that started it.
        let this = Arc::clone(self);
        let mut acme = acme.clone();
        acme.challenge = od.challenge;
        let name = name.to_string();
        let tenant = tenant.to_string();
        let wait = od.wait;
        tokio::spawn(async move {
            let _permit = permit;
            let result = this.client.issue(&acme, &name, Some(&tenant)).await;
            // `Busy`: another replica orders it, which is no failure of the name.
            let failed = match &result {
                Ok(()) | Err(super::AcmeError::Busy) => false,
                Err(_) => true,
            };
            this.order_done(&name, !failed, &acme);
            match result {
                Err(super::AcmeError::Busy) => {
                    // Another replica orders it: pick its certificate up from the shared storage.
                    let started = Instant::now();
                    while started.elapsed() < wait && this.client.store().acme(&name).is_none() {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        if let Ok(storage) = this.client.storage(&acme) {
                            this.client.load_stored(&storage, &name).await;
                        }
                    }
                    if this.client.store().acme(&name).is_some() {
                        this.adopt(&name, &tenant);
                    }
                }
                Ok(()) => {
                    this.issued
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone());
                    decision("issued");
                }
                Err(e) => {
                    decision("order_failed");
                    tracing::error!(domain = %name, error = %e, "on-demand certificate order failed");
                }
            }
            this.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let _ = tx.send(true);
        });
        Some(rx)
    }

    fn bounds(&self, od: &OnDemandSettings) -> Arc<Bounds> {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = b.as_ref().filter(|c| c.settings == *od) {
            return Arc::clone(current);
        }
        let per_minute = NonZeroU32::new(od.orders_per_minute).unwrap_or(NonZeroU32::MIN);
        let per_hour = NonZeroU32::new(od.orders_per_hour).unwrap_or(NonZeroU32::MIN);
        let per_tenant = NonZeroU32::new(od.tenant_orders_per_hour).unwrap_or(NonZeroU32::MIN);
        let fresh = Arc::new(Bounds {
            settings: od.clone(),
            rate: RateLimiter::direct(Quota::per_minute(per_minute)),
            hourly: RateLimiter::direct(Quota::per_hour(per_hour)),
            per_tenant: RateLimiter::keyed(Quota::per_hour(per_tenant)),
            orders: Arc::new(Semaphore::new(od.max_concurrent_orders)),
        });
        *b = Some(Arc::clone(&fresh));
        fresh
    }
}

impl OnDemand {
    /// The cached answer for `name`, or a fresh one (one ask per name at a time) within the ask budgets;
    /// `client` is the handshake's peer (none for renewals, which are not budgeted).
    async fn ownership(
        &self,
        name: &str,
        od: &OnDemandSettings,
        client: Option<std::net::IpAddr>,
    ) -> Ownership {
        if let Some(answer) = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name, od.cache_ttl)
        {
            return answer;
        }
        if let Some(ip) = client {
            let bounds = self.ask_bounds(od);
            if bounds.per_client.len() > MAX_KEYED {
                bounds.per_client.retain_recent();
            }
            // The client's own budget first: one client's flood does not spend everyone's.
            if bounds
                .per_client
                .check_key(&crate::support::client_budget_key(ip))
                .is_err()
                || bounds.global.check().is_err()
            {
                return Ownership::Throttled;
            }
        }
        self.asking
            .run(name, || async {
                let Ok(_slot) = self.ask_slots.try_acquire() else {
                    return Ownership::Unknown;
                };
                let answer = ask(&od.ask, name, od.ask_timeout).await;
                if matches!(answer, Ownership::Tenant(_) | Ownership::Nobody) {
                    let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
                    answers.insert(name, answer.clone(), od.cache_ttl, od.cache_size);
                    metrics().tls_on_demand_cached.set(answers.len() as i64);
                }
                answer
            })
            .await
    }

    fn ask_bounds(&self, od: &OnDemandSettings) -> Arc<AskBounds> {
        let mut b = self.ask_bounds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = b.as_ref().filter(|c| c.settings == *od) {
            return Arc::clone(current);
        }
        let global = NonZeroU32::new(od.asks_per_second).unwrap_or(NonZeroU32::MIN);
        let per_client = NonZeroU32::new(od.client_asks_per_minute).unwrap_or(NonZeroU32::MIN);
        let fresh = Arc::new(AskBounds {
            settings: od.clone(),
            global: RateLimiter::direct(Quota::per_second(global)),
            per_client: RateLimiter::keyed(Quota::per_minute(per_client)),
        });
        *b = Some(Arc::clone(&fresh));
        fresh
    }
}

/// One question to the ask endpoint: 200 with `{"tenant": "…"}` is a yes, 404 (or another 4xx) a no.
async fn ask(url: &str, name: &str, timeout: Duration) -> Ownership {
    let url = url.replace("{host}", name);
    match crate::support::http_client::get(&url, timeout).await {
        Ok((status, body)) => {
            let answer = ownership(status, &body);
            if answer == Ownership::Unknown {
                tracing::warn!(%url, status, "on-demand ask: no usable answer (5xx, or 200 without a valid `tenant`)");
            }
            answer
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "on-demand ask failed");
            Ownership::Unknown
        }
    }
}

/// What an ask endpoint's answer says: 200 with a `tenant` label is that tenant's, unless the body also
/// says `"allowed": false` (endpoints written for other proxies' ask answer so); a 4xx is nobody's;
/// anything else (5xx, a 200 without a valid tenant) is unknown, asked again later.
fn ownership(status: u16, body: &[u8]) -> Ownership {
    match status {
        200 => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
                return Ownership::Unknown;
            };
            if v["allowed"] == serde_json::Value::Bool(false) {
                return Ownership::Nobody;
            }
            match v["tenant"].as_str() {
                Some(t) if crate::config::is_label(t) => Ownership::Tenant(t.to_string()),
                _ => Ownership::Unknown,
            }
        }
        400..=499 => Ownership::Nobody,
        _ => Ownership::Unknown,
    }
}

/// The renewal loop's view of the on-demand domains.
#[async_trait::async_trait]
impl super::TenantDomains for OnDemand {
    fn issued_names(&self) -> Vec<String> {
        OnDemand::issued_names(self)
    }
    async fn still_allowed(&self, name: &str) -> Option<bool> {
        OnDemand::still_allowed(self, name).await
    }
    fn forget(&self, name: &str) {
        OnDemand::forget(self, name)
    }
    fn tenant_of(&self, name: &str) -> Option<String> {
        OnDemand::tenant_of(self, name)
    }
    fn adopt(&self, name: &str, tenant: &str) {
        OnDemand::adopt(self, name, tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_answers_are_read_by_status_tenant_and_allowed() {
        let t = |s: &str| Ownership::Tenant(s.to_string());
        assert_eq!(ownership(200, br#"{"tenant":"acme"}"#), t("acme"));
        assert_eq!(
            ownership(200, br#"{"tenant":"acme","allowed":true}"#),
            t("acme")
        );
        assert_eq!(
            ownership(200, br#"{"tenant":"acme","allowed":false}"#),
            Ownership::Nobody
        );
        assert_eq!(ownership(200, br#"{"allowed":false}"#), Ownership::Nobody);
        // `allowed` must be the boolean false: a string or null says nothing.
        assert_eq!(
            ownership(200, br#"{"tenant":"acme","allowed":"false"}"#),
            t("acme")
        );
        assert_eq!(
            ownership(200, br#"{"tenant":"acme","allowed":null}"#),
            t("acme")
        );
        for body in [
            &br#"{"tenant":"Not A Label"}"#[..],
            br#"{"tenant":7}"#,
            br#"{}"#,
            b"not json",
            b"",
            br#"["tenant"]"#,
        ] {
            assert_eq!(ownership(200, body), Ownership::Unknown, "{body:?}");
        }
        assert_eq!(ownership(404, b""), Ownership::Nobody);
        assert_eq!(ownership(403, br#"{"tenant":"acme"}"#), Ownership::Nobody);
        assert_eq!(ownership(400, b""), Ownership::Nobody);
        assert_eq!(ownership(499, b""), Ownership::Nobody);
        for status in [500, 502, 503, 201, 204, 301, 399, 500] {
            assert_eq!(
                ownership(status, br#"{"tenant":"acme"}"#),
                Ownership::Unknown,
                "{status}"
            );
        }
    }

    #[test]
    fn the_answer_cache_keeps_at_most_its_size_evicting_the_least_recently_used() {
        let mut c = AnswerCache::default();
        let ttl = Duration::from_secs(300);
        for i in 0..20_000 {
            c.insert(&format!("n{i}.example"), Ownership::Nobody, ttl, 100);
            if i == 50 {
                // Used again: it stays while older names leave.
                assert_eq!(c.get("n0.example", ttl), Some(Ownership::Nobody));
            }
            if i > 50 && i % 10 == 0 {
                assert!(c.get("n0.example", ttl).is_some(), "at {i}");
            }
        }
        assert_eq!(c.len(), 100);
        assert!(c.get("n0.example", ttl).is_some());
        assert!(c.get("n1.example", ttl).is_none());
        assert!(c.get("n19999.example", ttl).is_some());
        // Expired answers are not served, and leave first.
        c.insert("fresh", Ownership::Nobody, Duration::ZERO, 100);
        assert_eq!(c.get("fresh", Duration::ZERO), None);
    }
}
