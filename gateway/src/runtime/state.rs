//! The live state's life: the first config compiled at start ([`GatewayState::new`]), each reload
//! compiled and swapped in ([`GatewayState::apply`]), and the background work on it (health checks,
//! DNS discovery, tenant ranking). What a request reads is defined in [`crate::edge::state`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::edge::auth::jwks::JwksRegistry;
use crate::edge::route::Router;
use crate::support::redis::SharedRedis;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::metrics;
use crate::upstream::discovery::Discovery;
use crate::upstream::{spawn_health_checks, ServerRegistry, Upstream};

pub use crate::edge::state::{GatewayState, RouteRt, Snapshot};

impl Snapshot {
    fn build(
        config: Config,
        registry: &ServerRegistry,
        discovery: &Discovery,
        canaries: &crate::upstream::canary::CanaryRegistry,
        jwks: &JwksRegistry,
        redis: Option<&Arc<SharedRedis>>,
        h3_port: Option<u16>,
    ) -> Snapshot {
        let resolved = |host: &str, port: u16| discovery.addrs(host, port);
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u, registry, &resolved)))
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let find = |name: &str| upstreams.iter().find(|u| u.name == name).cloned();
                let canary = r.canary.as_ref().and_then(|c| {
                    Some(crate::upstream::canary::Canary {
                        upstream: find(&c.upstream)?,
                        state: canaries.get_or_create(&r.name, c),
                        spec: c.clone(),
                    })
                });
                RouteRt::new(r.clone(), r.upstream.as_deref().and_then(find), canary)
            })
            .collect();
        Snapshot {
            jwt: config.jwt.as_ref().map(|j| {
                let source = j.jwks.as_ref().map(|s| jwks.source(&s.origin, s.refresh));
                crate::edge::auth::JwtVerifier::new(j, source)
            }),
            api_keys: config
                .api_keys
                .as_ref()
                .map(|a| crate::edge::auth::api_key::ApiKeyStore::new(a.clone(), redis.cloned())),
            plans: config
                .plans
                .as_ref()
                .map(|p| crate::edge::plan::PolicyStore::new(p.clone(), redis.cloned())),
            limiters: crate::edge::ratelimit::Limiters::new(&config.rate_limits),
            router: Router::new(&config.routes, &config.tenancy),
            routes,
            upstreams,
            alt_svc: h3_port
                .zip(config.h3.alt_svc_max_age)
                .and_then(|(port, age)| {
                    http::HeaderValue::try_from(format!("h3=\":{port}\"; ma={}", age.as_secs()))
                        .ok()
                }),
            config: Arc::new(config),
        }
    }
}

impl GatewayState {
    /// Compiles the first config.
    pub fn new(config: Config) -> Arc<GatewayState> {
        let registry = ServerRegistry::default();
        let access_log = AccessLog::new(config.log.access_log);
        let redis = match config
            .redis
            .as_ref()
            .map(|r| SharedRedis::new(&r.endpoint()))
        {
            Some(Ok(r)) => Some(Arc::new(r)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "invalid Redis URL; revocation checks and global rate limits disabled");
                None
            }
            None => {
                tracing::warn!("no [redis]: revoked tokens are not refused at the edge (the backend still refuses them), and every rate limit is local to this process");
                None
            }
        };
        let revocation = redis.as_ref().zip(config.redis.as_ref()).map(|(r, s)| {
            crate::edge::auth::revocation::RevocationStore::new(Arc::clone(r), s.revocation_cache)
        });
        let global_limits = redis.as_ref().map(|r| {
            Arc::new(crate::edge::ratelimit::global::GlobalStore::new(
                Arc::clone(r),
            ))
        });
        let jwks = JwksRegistry::default();
        let certs = Arc::new(crate::tls::store::CertStore::default());
        set_static_certificates(&certs, &config);
        let client_auth = Arc::new(crate::tls::client_auth::Offers::default());
        offer_client_auth(&client_auth, &certs, &config);
        let discovery = Discovery::default();
        discovery.prime(&config);
        let canaries = crate::upstream::canary::CanaryRegistry::default();
        let tenant_stats = crate::telemetry::tenant_stats::TenantStats::default();
        let otel = config
            .tracing
            .as_ref()
            .and_then(|t| match crate::telemetry::otel::Tracing::new(t) {
                Ok(o) => {
                    tracing::info!(endpoint = %t.otlp_endpoint, "OpenTelemetry: request spans exported over OTLP");
                    Some(o)
                }
                Err(e) => {
                    tracing::error!(error = %e, "OpenTelemetry export not started");
                    None
                }
            });
        tenant_stats.configure(&config.tenant_stats);
        let core_gate = crate::edge::backpressure::CoreGate::new(
            config.overload.core_delay_target,
            config.overload.core_backpressure,
        );
        let h3_port = config.entrypoints.h3.map(|a| a.port());
        let runtime = Snapshot::build(
            config,
            &registry,
            &discovery,
            &canaries,
            &jwks,
            redis.as_ref(),
            h3_port,
        );
        metrics()
            .last_reload_success
            .set(crate::support::unix_now());
        Arc::new(GatewayState {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            discovery,
            canaries,
            tenant_stats,
            otel,
            background_started: AtomicBool::new(false),
            access_log,
            redis,
            revocation,
            global_limits,
            jwks,
            listeners_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            certs,
            client_auth,
            core_gate,
            h3_port,
        })
    }

    /// Compiles `config` and makes it current. Health checks of new servers start when called inside a
    /// Tokio runtime; see [`GatewayState::start_health_checks`].
    pub fn apply(&self, config: Config) {
        self.access_log.set_enabled(config.log.access_log);
        set_static_certificates(&self.certs, &config);
        offer_client_auth(&self.client_auth, &self.certs, &config);
        self.discovery.prime(&config);
        self.tenant_stats.configure(&config.tenant_stats);
        self.core_gate.configure(
            config.overload.core_delay_target,
            config.overload.core_backpressure,
        );
        let rt = Snapshot::build(
            config,
            &self.registry,
            &self.discovery,
            &self.canaries,
            &self.jwks,
            self.redis.as_ref(),
            self.h3_port,
        );
        self.runtime.store(Arc::new(rt));
        metrics()
            .last_reload_success
            .set(crate::support::unix_now());
        if tokio::runtime::Handle::try_current().is_ok() {
            self.start_health_checks();
        }
    }

    /// Starts checkers for servers that have none (must run inside a Tokio runtime).
    pub fn start_health_checks(&self) {
        for u in &self.current().upstreams {
            spawn_health_checks(u);
        }
    }

    /// Starts the background work on live state (once; must run inside a Tokio runtime): re-resolving
    /// upstream host names, and ranking tenants for Prometheus every `[tenant_stats] interval`.
    pub fn start_background(self: &Arc<Self>) {
        if self.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        dns_refresh::spawn(self);
        if let Some(client) = self.redis.as_ref().and_then(|r| r.pubsub_client()) {
            tokio::spawn(follow_plan_changes(Arc::downgrade(self), client));
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(gw) = weak.upgrade() else { return };
                let settings = gw.current().config.tenant_stats;
                gw.tenant_stats.recompute(settings.top_k);
                drop(gw);
                tokio::time::sleep(settings.interval).await;
            }
        });
    }

    /// Server states shared by successive configs and DNS answers.
    pub fn registry(&self) -> &ServerRegistry {
        &self.registry
    }

    /// Whether the gateway can serve: config loaded, listeners up, a healthy server in every upstream in use.
    pub fn ready(&self) -> Result<(), String> {
        if !self.listeners_up.load(Ordering::Acquire) {
            return Err("listeners not up yet".into());
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err("stopping: SIGTERM received, serving out [server] shutdown_delay".into());
        }
        let rt = self.current();
        let down: Vec<&str> = rt
            .upstreams_in_use()
            .filter(|u| !u.any_healthy())
            .map(|u| u.name.as_str())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no healthy server in upstream(s): {}",
                down.join(", ")
            ))
        }
    }
}

/// Follows [`crate::edge::plan::POLICY_CHANNEL`] for as long as the gateway lives, dropping the named tenants' entries
/// from the live snapshot's store. While the subscription is broken nothing is heard, so every entry is
/// dropped when it is made again. Must run inside a Tokio runtime.
pub async fn follow_plan_changes(state: std::sync::Weak<GatewayState>, client: redis::Client) {
    use futures_util::StreamExt;
    let invalidate = |tenant: &str| -> bool {
        let Some(gw) = state.upgrade() else {
            return false;
        };
        if let Some(store) = gw.current().plans.as_ref() {
            store.invalidate(tenant);
        }
        true
    };
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(crate::edge::plan::POLICY_CHANNEL).await {
                Ok(()) => {
                    crate::telemetry::metrics::metrics().plan_subscribed.set(1);
                    if !invalidate("*") {
                        return;
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let tenant: String = msg.get_payload().unwrap_or_else(|_| "*".to_string());
                        crate::telemetry::metrics::metrics()
                            .plan_invalidations
                            .inc();
                        if !invalidate(&tenant) {
                            return;
                        }
                    }
                    tracing::warn!("policy change subscription ended; subscribing again");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to policy changes"),
            },
            Err(e) => tracing::debug!(error = %e, "cannot connect to Redis for policy changes"),
        }
        crate::telemetry::metrics::metrics().plan_subscribed.set(0);
        if state.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Serves the certificate files of `config` (none when it has no `[tls]`), replacing the previous ones.
fn offer_client_auth(
    offers: &crate::tls::client_auth::Offers,
    certs: &Arc<crate::tls::store::CertStore>,
    config: &Config,
) {
    if let Err(e) = offers.configure(&config.routes, certs) {
        // Only a rustls configuration error (the protocol versions); the routes then refuse every
        // request that needs a certificate (none is asked for).
        tracing::error!(error = %e, "cannot set up the handshake that asks for client certificates");
    }
}

fn set_static_certificates(certs: &crate::tls::store::CertStore, config: &Config) {
    match &config.tls {
        Some(t) => certs.set_files(t.certificates.clone(), t.default_certificate),
        None => certs.set_files(Vec::new(), None),
    }
}

/// DNS discovery's background task: it reads the live config and upstreams and writes the answers of
/// [`crate::upstream::discovery`], so it lives beside the state it needs (not in the proxy's module, which
/// the state builds on).
pub mod dns_refresh {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Weak};

    use hickory_resolver::TokioResolver;

    use super::GatewayState;
    use crate::config::DnsSettings;
    use crate::upstream::discovery::{hosts, log_answer, resolve_all, resolver, Answer};
    use crate::upstream::{probe, spawn_health_checks};

    /// Re-resolves the live config's host names every `[dns] refresh`, for as long as the gateway lives,
    /// and applies changed answers to the live upstreams. Must run inside a Tokio runtime.
    pub async fn refresh_loop(state: Weak<GatewayState>) {
        let mut current: Option<(DnsSettings, TokioResolver)> = None;
        let mut failing: HashSet<String> = HashSet::new();
        loop {
            let Some(gw) = state.upgrade() else { return };
            let rt = gw.current();
            let settings = rt.config.dns.clone();
            let hosts = hosts(&rt.config);
            // A resolver only for a config that names hosts (and again when `[dns]` changes).
            if !hosts.is_empty() && current.as_ref().is_none_or(|(s, _)| *s != settings) {
                match resolver(&settings) {
                    Ok(r) => current = Some((settings.clone(), r)),
                    Err(e) => tracing::error!(error = %e, "DNS discovery cannot resolve"),
                }
            }
            if let (Some((_, resolver)), false) = (&current, hosts.is_empty()) {
                resolver.clear_cache();
                for (host, answer) in resolve_all(resolver, hosts).await {
                    let failed = matches!(answer, Answer::Failed(_));
                    // Say it once per failure streak, and when it mends.
                    if failed {
                        if failing.insert(host.clone()) {
                            log_answer(&host, &answer, false);
                        }
                    } else if failing.remove(&host) {
                        tracing::info!(host, "upstream host name resolves again");
                    }
                    if gw.discovery.record(&host, &answer) && matches!(answer, Answer::Gone) {
                        log_answer(&host, &answer, false);
                    }
                }
            }
            // Reconcile every live upstream with the answers, changed or not: a reload that compiled its
            // upstreams from older answers converges here too.
            let rt = gw.current();
            for up in rt.upstreams.iter().filter(|u| u.uses_dns()) {
                let lookup = |h: &str, p: u16| gw.discovery.addrs(h, p);
                // A new server's first check runs before it joins, when checks are on.
                let arriving = up.arriving(&lookup);
                let passed: Vec<SocketAddr> = match &up.spec.health {
                    Some(spec) if !arriving.is_empty() => {
                        let checks = arriving.iter().map(|(a, via)| async move {
                            (*a, probe(*a, via.as_deref(), spec).await)
                        });
                        futures_util::future::join_all(checks)
                            .await
                            .into_iter()
                            .filter_map(|(a, ok)| ok.then_some(a))
                            .collect()
                    }
                    Some(_) => Vec::new(),
                    None => arriving.into_iter().map(|(a, _)| a).collect(),
                };
                let verdict = |a: SocketAddr| passed.contains(&a);
                if let Some((added, removed)) = up.refresh_members(gw.registry(), &lookup, &verdict)
                {
                    tracing::info!(
                        upstream = %up.name,
                        added = ?added,
                        removed = ?removed,
                        servers = up.members().servers.len(),
                        "upstream servers changed (DNS)"
                    );
                    spawn_health_checks(up);
                }
            }
            let pause = settings.refresh;
            drop(rt);
            drop(gw);
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts [`refresh_loop`] for `state` (once; call inside a Tokio runtime).
    pub fn spawn(state: &Arc<GatewayState>) {
        let weak = Arc::downgrade(state);
        tokio::spawn(refresh_loop(weak));
    }
}
