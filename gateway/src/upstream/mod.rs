//! Upstream groups: servers, their health, and the choice of a server for a request.
//!
//! Server state (health, in-flight count) lives in [`ServerState`], shared across config reloads through
//! the [`ServerRegistry`] so that a reload neither forgets that a server is down nor restarts its checks.
//! An upstream's servers ([`Members`]) can change without a reload when a server entry is a host name:
//! `upstream::discovery` re-resolves it and swaps in new members (one atomic pointer swap, no lock on the
//! request path), keeping the state of the servers that stay.

pub mod admission;
pub mod affinity;
mod balance;
pub mod canary;
pub mod discovery;
mod health;
pub mod send_proxy;

use balance::{hash_ring, smooth_wrr};
pub use health::{probe, spawn_health_checks};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{Balance, HealthSpec, ServerTarget, UpstreamProtocol, UpstreamSpec};
use crate::support::hash64;
use crate::telemetry::metrics::metrics;

/// One backend server as the gateway sees it.
#[derive(Debug)]
pub struct ServerState {
    pub upstream: String,
    pub addr: SocketAddr,
    pub label: String,
    /// The host name this server's address came from (`backend:8081`), when it came from DNS.
    pub via: Option<String>,
    healthy: AtomicBool,
    active: AtomicUsize,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    health: ArcSwapOption<HealthSpec>,
    /// Told when `health` is set and when the server is dropped: a checker with checks off waits on it
    /// instead of looking again on a schedule.
    health_set: Arc<tokio::sync::Notify>,
    checker: AtomicBool,
}

impl ServerState {
    fn new(
        upstream: &str,
        addr: SocketAddr,
        label: &str,
        via: Option<&str>,
        healthy: bool,
    ) -> ServerState {
        let s = ServerState {
            upstream: upstream.to_string(),
            addr,
            label: label.to_string(),
            via: via.map(str::to_string),
            healthy: AtomicBool::new(healthy),
            active: AtomicUsize::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            health: ArcSwapOption::empty(),
            health_set: Arc::new(tokio::sync::Notify::new()),
            checker: AtomicBool::new(false),
        };
        metrics()
            .server_up
            .with_label_values(&[upstream, label])
            .set(i64::from(healthy));
        s
    }

    /// The server's active checks (`None`: off), as the config now says.
    fn set_health(&self, spec: Option<&HealthSpec>) {
        self.health.store(spec.cloned().map(Arc::new));
        self.health_set.notify_one();
    }

    /// Whether the server is in rotation.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests in flight to this server.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks one more request in flight; the guard undoes it when dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Records one health check result and moves the server in or out of rotation per the thresholds.
    pub fn record_check(&self, ok: bool, spec: &HealthSpec) {
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let n = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= spec.healthy_threshold && !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(upstream = %self.upstream, server = %self.label, "server healthy again: back in rotation");
                metrics()
                    .server_up
                    .with_label_values(&[&self.upstream, &self.label])
                    .set(1);
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let n = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= spec.unhealthy_threshold && self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.upstream, server = %self.label, "server failed health checks: taken out of rotation");
                metrics()
                    .server_up
                    .with_label_values(&[&self.upstream, &self.label])
                    .set(0);
            }
        }
    }
}

impl Drop for ServerState {
    fn drop(&mut self) {
        // The server left the config: its series must not linger as a stale 0 or 1.
        let _ = metrics()
            .server_up
            .remove_label_values(&[&self.upstream, &self.label]);
        // A checker waiting for checks to be switched on ends.
        self.health_set.notify_one();
    }
}

/// Keeps a server's in-flight count for least_conn while a request uses it.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server states by (upstream, address), shared by successive configs. Touched only on (re)load.
#[derive(Default)]
pub struct ServerRegistry {
    servers: Mutex<HashMap<(String, SocketAddr), Weak<ServerState>>>,
    /// Admission state by upstream name: its limit, in-flight count and queue outlive a reload.
    admissions: Mutex<HashMap<String, Weak<admission::Admission>>>,
}

impl ServerRegistry {
    /// The admission state of upstream `spec`: the existing one (configured anew) or a new one.
    fn admission(&self, spec: &UpstreamSpec) -> Arc<admission::Admission> {
        let mut map = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(a) = map.get(&spec.name).and_then(Weak::upgrade) {
            a.configure(&spec.concurrency);
            return a;
        }
        let a = admission::Admission::new(&spec.name, &spec.concurrency);
        map.insert(spec.name.clone(), Arc::downgrade(&a));
        a
    }

    /// The state of `addr` in `upstream`: the existing one if the server is already known, else a new one,
    /// in rotation from the start (`healthy`) or only after its first passing check.
    fn get_or_create(
        &self,
        upstream: &str,
        want: &Wanted,
        healthy: &dyn Fn(SocketAddr) -> bool,
    ) -> Arc<ServerState> {
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let key = (upstream.to_string(), want.addr);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(ServerState::new(
            upstream,
            want.addr,
            &want.label,
            want.via.as_deref(),
            healthy(want.addr),
        ));
        map.insert(key, Arc::downgrade(&s));
        s
    }
}

/// One server an upstream should have, from its spec and the current DNS answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub addr: SocketAddr,
    pub label: String,
    pub via: Option<String>,
    pub weight: u32,
}

/// The servers of an upstream at one moment, with the balancing tables built over them.
#[derive(Debug, Default)]
pub struct Members {
    pub servers: Vec<Arc<ServerState>>,
    /// Smooth weighted round-robin order (weighted balance).
    schedule: Vec<u16>,
    /// Consistent-hash ring of (point, server index), sorted (hash_tenant balance).
    ring: Vec<(u64, u16)>,
    /// What these members were built from, to tell whether DNS changed anything.
    wanted: Vec<Wanted>,
}

impl Members {
    fn build(
        upstream: &str,
        wanted: Vec<Wanted>,
        registry: &ServerRegistry,
        new_healthy: &dyn Fn(SocketAddr) -> bool,
    ) -> Members {
        let servers: Vec<Arc<ServerState>> = wanted
            .iter()
            .map(|w| registry.get_or_create(upstream, w, new_healthy))
            .collect();
        let weights: Vec<u32> = wanted.iter().map(|w| w.weight).collect();
        let ring = hash_ring(
            &wanted
                .iter()
                .map(|w| (w.label.as_str(), w.weight))
                .collect::<Vec<_>>(),
        );
        Members {
            servers,
            schedule: if weights.is_empty() {
                Vec::new()
            } else {
                smooth_wrr(&weights)
            },
            ring,
            wanted,
        }
    }
}

/// The servers `spec` asks for, given the addresses each host name resolves to now (`resolved`; a name
/// without an answer yet contributes nothing). An address listed twice counts once.
pub fn wanted(spec: &UpstreamSpec, resolved: &dyn Fn(&str, u16) -> Vec<SocketAddr>) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::with_capacity(spec.servers.len());
    for s in &spec.servers {
        match &s.target {
            ServerTarget::Addr(a) => {
                if !out.iter().any(|w| w.addr == *a) {
                    out.push(Wanted {
                        addr: *a,
                        label: s.label.clone(),
                        via: None,
                        weight: s.weight,
                    });
                }
            }
            ServerTarget::Name { host, port } => {
                let mut addrs = resolved(host, *port);
                addrs.sort_unstable();
                for a in addrs {
                    if !out.iter().any(|w| w.addr == a) {
                        out.push(Wanted {
                            addr: a,
                            label: a.to_string(),
                            via: Some(s.label.clone()),
                            weight: s.weight,
                        });
                    }
                }
            }
        }
    }
    out
}

/// A named group of servers and how to pick one.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    pub spec: UpstreamSpec,
    members: ArcSwap<Members>,
    next: AtomicUsize,
    /// Its concurrency limit and the queue in front of it.
    pub admission: Arc<admission::Admission>,
    /// `gateway_upstream_duration_seconds{upstream}`, bound on first use.
    duration: std::sync::OnceLock<prometheus::Histogram>,
}

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS: u32 = 160;

impl Upstream {
    /// The group's upstream-latency histogram.
    pub fn duration(&self) -> &prometheus::Histogram {
        self.duration
            .get_or_init(|| metrics().upstream_duration.with_label_values(&[&self.name]))
    }

    /// Builds the group, reusing server state from `registry`. Host names contribute the addresses
    /// `resolved` knows for them now.
    pub fn new(
        spec: &UpstreamSpec,
        registry: &ServerRegistry,
        resolved: &dyn Fn(&str, u16) -> Vec<SocketAddr>,
    ) -> Upstream {
        let members = Members::build(&spec.name, wanted(spec, resolved), registry, &|_| true);
        for s in &members.servers {
            s.set_health(spec.health.as_ref());
            if spec.health.is_none() && !s.is_healthy() {
                // Checks were switched off: nothing will ever bring it back, so trust it again.
                s.healthy.store(true, Ordering::Relaxed);
                metrics()
                    .server_up
                    .with_label_values(&[&spec.name, &s.label])
                    .set(1);
            }
        }
        Upstream {
            duration: std::sync::OnceLock::new(),
            name: spec.name.clone(),
            balance: spec.balance,
            protocol: spec.protocol,
            spec: spec.clone(),
            members: ArcSwap::from_pointee(members),
            next: AtomicUsize::new(0),
            admission: registry.admission(spec),
        }
    }

    /// The servers now (one atomic load).
    pub fn members(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    /// Whether the upstream names any server by host name.
    pub fn uses_dns(&self) -> bool {
        self.spec
            .servers
            .iter()
            .any(|s| matches!(s.target, ServerTarget::Name { .. }))
    }

    /// The addresses that the DNS answers in `resolved` would add to the current members, each with
    /// the server entry (`host:port`) it came from.
    pub fn arriving(
        &self,
        resolved: &dyn Fn(&str, u16) -> Vec<SocketAddr>,
    ) -> Vec<(SocketAddr, Option<String>)> {
        let current = self.members.load();
        wanted(&self.spec, resolved)
            .into_iter()
            .filter(|w| !current.wanted.iter().any(|c| c.addr == w.addr))
            .map(|w| (w.addr, w.via))
            .collect()
    }

    /// Re-applies the DNS answers: when the servers they give differ from the current members, builds
    /// new members (servers that stay keep their state: health, streaks, in-flight count, checker) and
    /// swaps them in. A server new to the upstream enters in rotation or not as `new_healthy` says (the
    /// verdict of a first check made before the swap, so that no request meets an unchecked server and
    /// none waits for a check). Returns the addresses added and removed, or `None` when nothing changed.
    pub fn refresh_members(
        &self,
        registry: &ServerRegistry,
        resolved: &dyn Fn(&str, u16) -> Vec<SocketAddr>,
        new_healthy: &dyn Fn(SocketAddr) -> bool,
    ) -> Option<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let want = wanted(&self.spec, resolved);
        let current = self.members.load();
        if current.wanted == want {
            return None;
        }
        let added: Vec<SocketAddr> = want
            .iter()
            .filter(|w| !current.wanted.iter().any(|c| c.addr == w.addr))
            .map(|w| w.addr)
            .collect();
        let removed: Vec<SocketAddr> = current
            .wanted
            .iter()
            .filter(|c| !want.iter().any(|w| w.addr == c.addr))
            .map(|c| c.addr)
            .collect();
        let members = Members::build(&self.name, want, registry, new_healthy);
        for s in &members.servers {
            s.set_health(self.spec.health.as_ref());
        }
        self.members.store(Arc::new(members));
        Some((added, removed))
    }

    /// Whether any server is in rotation.
    pub fn any_healthy(&self) -> bool {
        self.members.load().servers.iter().any(|s| s.is_healthy())
    }

    /// Picks a healthy server not in `tried`. `tenant` keys the hash ring for `hash_tenant`.
    pub fn select(&self, tenant: Option<&str>, tried: &[SocketAddr]) -> Option<Arc<ServerState>> {
        let m = self.members.load();
        let n = m.servers.len();
        if n == 0 {
            return None;
        }
        let eligible = |i: usize| m.servers[i].is_healthy() && !tried.contains(&m.servers[i].addr);
        let i = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
            }
            Balance::Weighted => {
                let len = m.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| m.schedule[(start + k) % len] as usize)
                    .find(|&i| eligible(i))
            }
            Balance::LeastConn => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| eligible(i))
                    .min_by_key(|&i| m.servers[i].active())
            }
            Balance::HashTenant => match tenant {
                Some(t) if !m.ring.is_empty() => {
                    let h = hash64(t.as_bytes());
                    let start = m.ring.partition_point(|(p, _)| *p < h);
                    let len = m.ring.len();
                    (0..len)
                        .map(|k| m.ring[(start + k) % len].1 as usize)
                        .find(|&i| eligible(i))
                }
                _ => {
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
                }
            },
        }?;
        Some(Arc::clone(&m.servers[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerSpec, Timeouts};
    use std::time::Duration;

    fn spec(balance: Balance, weights: &[u32]) -> UpstreamSpec {
        UpstreamSpec {
            name: format!("t-{balance}-{}", fastrand::u64(..)),
            servers: weights
                .iter()
                .enumerate()
                .map(|(i, w)| ServerSpec {
                    target: ServerTarget::Addr(
                        format!("127.0.0.1:{}", 10000 + i).parse().expect("addr"),
                    ),
                    label: format!("127.0.0.1:{}", 10000 + i),
                    weight: *w,
                })
                .collect(),
            balance,
            protocol: UpstreamProtocol::Http1,
            tls: None,
            send_proxy: false,
            health: None,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
                write: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            max_tries: 3,
            concurrency: crate::config::ConcurrencySpec::default(),
        }
    }

    fn none(_: &str, _: u16) -> Vec<SocketAddr> {
        Vec::new()
    }

    /// `select` as an index into the current members, with `tried` given as indexes too.
    fn idx(up: &Upstream, tenant: Option<&str>, tried: &[usize]) -> Option<usize> {
        let m = up.members();
        let tried: Vec<SocketAddr> = tried.iter().map(|i| m.servers[*i].addr).collect();
        up.select(tenant, &tried).map(|s| {
            m.servers
                .iter()
                .position(|x| Arc::ptr_eq(x, &s))
                .expect("a member")
        })
    }

    fn named(host: &str, health: bool) -> UpstreamSpec {
        let mut s = spec(Balance::RoundRobin, &[]);
        s.servers = vec![ServerSpec {
            target: ServerTarget::Name {
                host: host.into(),
                port: 8081,
            },
            label: format!("{host}:8081"),
            weight: 1,
        }];
        if health {
            s.health = Some(HealthSpec {
                path: "/healthz".into(),
                host: None,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
                tls: None,
                h2: false,
                grpc: None,
            });
        }
        s
    }

    #[test]
    fn dns_answers_change_members_and_keep_the_state_of_servers_that_stay() {
        let reg = ServerRegistry::default();
        let a: SocketAddr = "10.0.0.1:8081".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:8081".parse().expect("addr");
        let c: SocketAddr = "10.0.0.3:8081".parse().expect("addr");
        let up = Upstream::new(&named("backend", true), &reg, &|h, p| {
            assert_eq!((h, p), ("backend", 8081));
            vec![b, a]
        });
        let m = up.members();
        assert_eq!(
            m.servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
            vec![a, b],
            "sorted, every address a server"
        );
        assert!(
            m.servers.iter().all(|s| s.is_healthy()),
            "the first answer serves at once"
        );
        assert_eq!(m.servers[0].label, "10.0.0.1:8081");
        assert_eq!(m.servers[0].via.as_deref(), Some("backend:8081"));
        let spec = up.spec.health.clone().expect("health");
        m.servers[1].record_check(false, &spec);
        assert!(!m.servers[1].is_healthy());
        let kept = Arc::clone(&m.servers[1]);
        drop(m);

        assert_eq!(
            up.refresh_members(&reg, &|_, _| vec![a, b], &|_| true),
            None,
            "same answer, no change"
        );
        assert_eq!(
            up.arriving(&|_, _| vec![b, c]),
            vec![(c, Some("backend:8081".to_string()))]
        );
        let change = up.refresh_members(&reg, &|_, _| vec![b, c], &|x| x != c);
        assert_eq!(change, Some((vec![c], vec![a])));
        let m = up.members();
        assert_eq!(
            m.servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
            vec![b, c]
        );
        assert!(Arc::ptr_eq(&m.servers[0], &kept), "b keeps its state");
        assert!(!m.servers[0].is_healthy(), "b stays out of rotation");
        assert!(
            !m.servers[1].is_healthy(),
            "c enters as its first check said"
        );
        assert_eq!(idx(&up, None, &[]), None, "nobody healthy yet");
        m.servers[1].record_check(true, &spec);
        assert_eq!(idx(&up, None, &[]), Some(1));

        // No answer at all (the name is gone): no servers, and select says so.
        assert!(up.refresh_members(&reg, &none, &|_| true).is_some());
        assert!(up.members().servers.is_empty());
        assert_eq!(up.select(None, &[]).map(|s| s.addr), None);
        assert!(!up.any_healthy());
    }

    #[test]
    fn a_name_without_an_answer_yet_gets_servers_when_one_comes() {
        let reg = ServerRegistry::default();
        let a: SocketAddr = "10.0.1.1:8081".parse().expect("addr");
        let up = Upstream::new(&named("api", false), &reg, &none);
        assert!(up.members().servers.is_empty());
        assert!(up
            .refresh_members(&reg, &|_, _| vec![a], &|_| true)
            .is_some());
        assert_eq!(up.select(None, &[]).map(|s| s.addr), Some(a));
    }

    #[test]
    fn smooth_wrr_interleaves() {
        assert_eq!(smooth_wrr(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[1, 1]), vec![0, 1]);
    }

    #[test]
    fn round_robin_and_weighted_distribution() {
        let reg = ServerRegistry::default();
        let rr = Upstream::new(&spec(Balance::RoundRobin, &[1, 1, 1]), &reg, &none);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[idx(&rr, None, &[]).expect("server")] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        let w = Upstream::new(&spec(Balance::Weighted, &[3, 1]), &reg, &none);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[idx(&w, None, &[]).expect("server")] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn unhealthy_and_tried_servers_are_skipped() {
        let reg = ServerRegistry::default();
        let up = Upstream::new(&spec(Balance::RoundRobin, &[1, 1, 1]), &reg, &none);
        up.members().servers[1]
            .healthy
            .store(false, Ordering::Relaxed);
        for _ in 0..10 {
            let i = idx(&up, None, &[0]).expect("server");
            assert_eq!(i, 2);
        }
        up.members().servers[2]
            .healthy
            .store(false, Ordering::Relaxed);
        assert_eq!(idx(&up, None, &[0]), None);
    }

    #[test]
    fn least_conn_prefers_idle_servers() {
        let reg = ServerRegistry::default();
        let up = Upstream::new(&spec(Balance::LeastConn, &[1, 1]), &reg, &none);
        let _busy = up.members().servers[0].begin();
        for _ in 0..10 {
            assert_eq!(idx(&up, None, &[]), Some(1));
        }
    }

    #[test]
    fn hash_tenant_is_sticky_and_moves_little() {
        let reg = ServerRegistry::default();
        let up = Upstream::new(&spec(Balance::HashTenant, &[1, 1, 1, 1]), &reg, &none);
        let tenants: Vec<String> = (0..1000).map(|i| format!("tenant{i}")).collect();
        let before: Vec<usize> = tenants
            .iter()
            .map(|t| idx(&up, Some(t), &[]).expect("s"))
            .collect();
        for (t, b) in tenants.iter().zip(&before) {
            assert_eq!(idx(&up, Some(t), &[]), Some(*b));
        }
        let mut counts = [0; 4];
        for b in &before {
            counts[*b] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "uneven ring: {counts:?}");
        // Taking one server out moves only its tenants.
        up.members().servers[0]
            .healthy
            .store(false, Ordering::Relaxed);
        let moved = tenants
            .iter()
            .zip(&before)
            .filter(|(t, b)| **b != 0 && idx(&up, Some(t), &[]) != Some(**b))
            .count();
        assert_eq!(moved, 0);
    }
}
