//! The renewal loop: orders what has no certificate, renews each name at two thirds of its lifetime
//! (minus a jitter), backs off after failures, and with shared storage loads what another replica
//! ordered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::*;

/// How often the manager looks at what is due (cheap: a few comparisons per name) and, with shared
/// storage, at the store's version counter.
const TICK: Duration = Duration::from_secs(1);
/// When another replica holds a name's lock, look again after this.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// Per-name schedule.
struct Schedule {
    /// Serial of the certificate the renewal time was computed for.
    serial: String,
    renew_at: i64,
    failures: u32,
    not_before: Instant,
}

/// Tenants' own domains with an on-demand certificate, as the renewal loop sees them (implemented by
/// [`on_demand::OnDemand`], which orders through this module: the trait keeps the dependency one
/// way).
#[async_trait::async_trait]
pub trait TenantDomains: Send + Sync {
    /// The domains to renew.
    fn issued_names(&self) -> Vec<String>;
    /// Whether an active tenant still owns `name` (asked afresh); `None` when the ask failed (the
    /// endpoint down or answering nonsense), which says nothing about the domain.
    async fn still_allowed(&self, name: &str) -> Option<bool>;
    /// Stops renewing `name` and routing it as a tenant's.
    fn forget(&self, name: &str);
    /// The tenant that owns `name`.
    fn tenant_of(&self, name: &str) -> Option<String>;
    /// A certificate for `tenant`'s domain `name` that another replica ordered: serve and renew it here.
    fn adopt(&self, name: &str, tenant: &str);
}

/// The background service that orders and renews certificates.
pub struct AcmeManager {
    /// The config in force (`[tls.acme]`, `[tls.on_demand]` follow reloads).
    pub config: Arc<dyn crate::config::Live>,
    pub client: Arc<AcmeClient>,
    /// Tenants' own domains with a certificate, renewed like the configured names.
    pub on_demand: Option<Arc<dyn TenantDomains>>,
}

/// The wait after `failures` failures in a row: doubling from `initial`, capped at `max`, with up to
/// 10 % jitter so that replicas do not retry in step.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let base = exp.min(max);
    base + base.mul_f64(fastrand::f64() * 0.1)
}

/// Wall-clock Unix time in whole seconds.
fn unix_now() -> i64 {
    crate::support::unix_now() as i64
}

impl AcmeManager {
    /// With shared storage: when the version counter moved, loads every certificate whose serial
    /// differs from the one served (ordered or renewed by another replica).
    async fn watch(&self, seen: &mut Option<u64>) {
        let Some(shared) = self.client.shared() else {
            return;
        };
        let version = match shared.version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the shared ACME storage");
                return;
            }
        };
        if *seen == Some(version) {
            return;
        }
        let names = match shared.names().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the shared ACME storage");
                return;
            }
        };
        let storage = Storage::Redis(Arc::clone(shared));
        for name in names {
            if let Some(tenant) = self.client.load_stored(&storage, &name).await {
                if let Some(od) = &self.on_demand {
                    od.adopt(&name, &tenant);
                }
            }
        }
        *seen = Some(version);
    }

    /// One pass over the configured names and the tenants' domains issued on demand: order what is
    /// missing or due, unless backing off.
    async fn pass(
        &self,
        acme: &AcmeSettings,
        od_challenge: Option<ChallengeKind>,
        schedules: &mut HashMap<String, Schedule>,
    ) {
        let storage = match self.client.storage(acme) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "ACME storage unavailable");
                return;
            }
        };
        let store = self.client.store();
        let mut names: Vec<(String, bool)> =
            acme.domains.iter().map(|d| (d.clone(), false)).collect();
        if let Some(od) = &self.on_demand {
            names.extend(od.issued_names().into_iter().map(|n| (n, true)));
        }
        for (name, on_demand) in &names {
            if matches!(storage, Storage::Dir(_)) && !on_demand {
                self.client.load_stored(&storage, name).await;
            }
            let current = store.acme(name);
            let s = schedules.entry(name.clone()).or_insert_with(|| Schedule {
                serial: String::new(),
                renew_at: 0,
                failures: 0,
                not_before: Instant::now(),
            });
            if let Some(c) = &current {
                if c.serial != s.serial {
                    s.serial = c.serial.clone();
                    s.renew_at = jittered_renewal(c, fastrand::f64());
                }
            }
            let due = current.is_none() || unix_now() >= s.renew_at;
            if !due || Instant::now() < s.not_before {
                continue;
            }
            if *on_demand {
                // A tenant's domain is renewed only while an active tenant still owns it.
                if let Some(od) = &self.on_demand {
                    match od.still_allowed(name).await {
                        Some(true) => {}
                        Some(false) => {
                            tracing::info!(domain = %name, "not renewing: no active tenant owns this domain any more");
                            od.forget(name);
                            schedules.remove(name);
                            continue;
                        }
                        None => {
                            // The certificate is still valid: ask again later rather than drop a
                            // tenant's domain over an outage of the ask endpoint.
                            s.failures += 1;
                            let wait = backoff(s.failures, acme.retry_initial, acme.retry_max);
                            s.not_before = Instant::now() + wait;
                            tracing::warn!(
                                domain = %name,
                                failures = s.failures,
                                retry_in_secs = wait.as_secs_f64(),
                                "renewal waits: the ask endpoint did not answer whether a tenant still owns this domain"
                            );
                            continue;
                        }
                    }
                }
            }
            let tenant = if *on_demand {
                self.on_demand.as_ref().and_then(|od| od.tenant_of(name))
            } else {
                None
            };
            // Tenants' domains are validated the on-demand way (their DNS is not ours).
            let mut settings = acme.clone();
            if let (true, Some(c)) = (*on_demand, od_challenge) {
                settings.challenge = c;
            }
            match self.client.issue(&settings, name, tenant.as_deref()).await {
                Ok(()) => {
                    s.failures = 0;
                    s.not_before = Instant::now();
                }
                Err(AcmeError::Busy) => {
                    // Another replica is ordering it; its certificate arrives through the watch.
                    s.not_before = Instant::now() + BUSY_RETRY;
                    continue;
                }
                Err(e) => {
                    s.failures += 1;
                    let wait = backoff(s.failures, acme.retry_initial, acme.retry_max);
                    s.not_before = Instant::now() + wait;
                    tracing::error!(
                        domain = %name,
                        error = %e,
                        problem = %problem_json(&e),
                        failures = s.failures,
                        retry_in_secs = wait.as_secs_f64(),
                        serving_old_certificate = current.is_some(),
                        "ACME order failed"
                    );
                }
            }
            metrics()
                .acme_failures
                .with_label_values(&[name])
                .set(i64::from(s.failures));
        }
    }
}

/// Whether the CA answered that the account does not exist.
#[async_trait]
impl BackgroundService for AcmeManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut schedules: HashMap<String, Schedule> = HashMap::new();
        let mut seen_version = None;
        loop {
            let config = self.config.config();
            if let Some(acme) = config.tls.as_ref().and_then(|t| t.acme.as_ref()) {
                let od_challenge = config
                    .tls
                    .as_ref()
                    .and_then(|t| t.on_demand.as_ref())
                    .map(|o| o.challenge);
                tokio::select! {
                    _ = async {
                        self.watch(&mut seen_version).await;
                        self.pass(acme, od_challenge, &mut schedules).await;
                    } => {}
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// When `cert` is renewed: two thirds into its validity ([`crate::support::cert::Certificate::renew_at`]), less up to 1/20 of
/// its lifetime (`r` in `[0, 1)`: a few days for 90 days) so that replicas and names do not renew in step.
fn jittered_renewal(cert: &crate::support::cert::Certificate, r: f64) -> i64 {
    let lifetime = (cert.not_after - cert.not_before).max(0);
    cert.renew_at() - (lifetime as f64 / 20.0 * r.clamp(0.0, 1.0)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_in_less_at_most_a_twentieth_of_the_lifetime() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["a.example.test".to_string()]).expect("params");
        let pem = params.self_signed(&key).expect("sign").pem();
        let mut cert = crate::support::cert::Certificate::from_pem(
            pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            crate::support::cert::Source::Acme,
        )
        .expect("parse");
        let day = 86_400;
        cert.not_before = 0;
        cert.not_after = 90 * day;
        assert_eq!(jittered_renewal(&cert, 0.0), 60 * day);
        assert_eq!(jittered_renewal(&cert, 0.5), 60 * day - 90 * day / 40);
        let earliest = 60 * day - 90 * day / 20;
        for _ in 0..1_000 {
            let at = jittered_renewal(&cert, fastrand::f64());
            assert!((earliest..=60 * day).contains(&at), "{at}");
        }
        assert_eq!(jittered_renewal(&cert, 1.0), earliest);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        let within = |d: Duration, base: u64| {
            assert!(
                d >= Duration::from_secs(base) && d <= Duration::from_secs(base) * 11 / 10,
                "{d:?} vs {base}"
            );
        };
        within(backoff(1, i, max), 60);
        within(backoff(2, i, max), 120);
        within(backoff(3, i, max), 240);
        within(backoff(10, i, max), 3600);
        within(backoff(u32::MAX, i, max), 3600);
    }
}
