//! Per-tenant figures with bounded label cardinality.
//!
//! Every request with a tenant counts, exactly, in that tenant's counters (requests, 5xx, rate-limit
//! refusals, a latency histogram): `GET /api/tenants/{tenant}/stats` on the admin listener answers from
//! them. Prometheus gets only the top K tenants by requests (`[tenant_stats] top_k`, default 20) plus
//! `other`, ranked again every `interval`: at most 4 × (K + 1) series whatever the number of tenants.
//!
//! `gateway_tenant_requests_total`, `gateway_tenant_errors_total` and `gateway_tenant_ratelimited_total`
//! are counters: a named tenant's series is its own total; `other` grows by what the tenants not named
//! at each recomputation added since the previous one, so `sum(rate(…))` over all series stays the
//! platform's rate when tenants enter or leave the top K. `gateway_tenant_p99_seconds` is the p99 of
//! the last interval.
//!
//! The counters live in a map split in shards (a read lock on one shard and a few relaxed atomics per
//! request, no global lock). Tenants are host labels, which clients choose: only requests that passed
//! auth (or reached an upstream) enter a tenant's own counters ([`TenantStats::record`]; the others go to
//! `other` through [`TenantStats::record_unadmitted`]), beyond `max_tenants` new tenants are counted in
//! `other` only, and tenants idle for `idle_evict` leave the table at the next ranking, so random
//! subdomains can neither grow memory without bound nor keep a real new tenant out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

/// Latency classes: upper bounds 0.5 ms × 2^i (0.5 ms … 16 s, then everything slower).
const CLASSES: usize = 16;
const SHARDS: usize = 64;

fn class_bound(i: usize) -> f64 {
    0.0005 * f64::from(1u32 << i)
}

fn class_of(seconds: f64) -> usize {
    // The first i with seconds <= 0.5 ms × 2^i: from the bit length of the time in half-milliseconds.
    let halves = (seconds * 2000.0).ceil();
    if halves <= 1.0 {
        return 0;
    }
    let n = halves as u64; // saturates for huge values
    ((64 - (n - 1).leading_zeros()) as usize).min(CLASSES - 1)
}

/// The p-quantile's class bound of `counts` (0 when empty).
fn quantile(counts: &[u64; CLASSES], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return class_bound(i);
        }
    }
    class_bound(CLASSES - 1)
}

/// requests, 5xx, rate-limited, overloaded: the running totals a tenant has.
const TOTALS: usize = 4;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// Answers by status class: 1xx–5xx at 0–4 (no answer at all counts as 5xx).
    classes: [AtomicU64; 5],
    ratelimited: AtomicU64,
    /// Refused for overload (no upstream slot in time).
    overloaded: AtomicU64,
    latency: [AtomicU32; CLASSES],
    /// Latency since the last recomputation (drained by it).
    recent: [AtomicU32; CLASSES],
    /// requests, 5xx, rate-limited, overloaded as of the last recomputation.
    reported: [AtomicU64; TOTALS],
    first_seen: AtomicU64,
    last_seen: AtomicU64,
}

impl Counters {
    fn totals(&self) -> [u64; TOTALS] {
        [
            self.requests.load(Ordering::Relaxed),
            self.classes[4].load(Ordering::Relaxed),
            self.ratelimited.load(Ordering::Relaxed),
            self.overloaded.load(Ordering::Relaxed),
        ]
    }
}

/// `[tenant_stats]` (validated in `config`).
pub use crate::config::TenantStatsSettings as Settings;

/// What one request adds to its tenant.
pub struct Sample {
    pub status: u16,
    pub seconds: f64,
    pub ratelimited: bool,
    /// Refused for overload (apart from rate limits).
    pub overloaded: bool,
}

/// Every tenant's counters, and the Prometheus lines of the top K.
pub struct TenantStats {
    shards: Vec<RwLock<HashMap<Box<str>, Arc<Counters>>>>,
    /// Wall-clock seconds, refreshed by each recomputation: `last_seen` is precise to the interval, and a
    /// request reads no clock for it.
    now: AtomicU64,
    tenants: AtomicUsize,
    max_tenants: AtomicUsize,
    idle_evict_secs: AtomicU64,
    /// Requests of tenants beyond `max_tenants`, and requests refused before auth (counted in `other`
    /// only).
    untracked: Counters,
    /// `other`'s running totals (requests, 5xx, rate-limited, overloaded).
    other: Mutex<[u64; TOTALS]>,
    /// The exposition of the last recomputation, appended to `/metrics`.
    exposition: ArcSwap<String>,
}

impl Default for TenantStats {
    fn default() -> Self {
        TenantStats {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            now: AtomicU64::new(now_secs()),
            tenants: AtomicUsize::new(0),
            max_tenants: AtomicUsize::new(usize::MAX),
            idle_evict_secs: AtomicU64::new(u64::MAX),
            untracked: Counters::default(),
            other: Mutex::new([0; TOTALS]),
            exposition: ArcSwap::from_pointee(String::new()),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TenantStats {
    fn shard(&self, tenant: &str) -> &RwLock<HashMap<Box<str>, Arc<Counters>>> {
        // A cheap hash picks the shard (the map inside keeps its keyed hash: tenants are client-chosen).
        &self.shards[(crate::support::hash64(tenant.as_bytes()) as usize) % SHARDS]
    }

    /// Counts one request that did not pass auth: in `other` only, whatever its Host says (the tenant is
    /// then only a label the client chose).
    pub fn record_unadmitted(&self, s: &Sample) {
        Self::add(&self.untracked, s);
    }

    /// Counts one request of `tenant` (one that passed auth or reached an upstream).
    pub fn record(&self, tenant: &str, s: &Sample) {
        let add = |c: &Counters| Self::add(c, s);
        let shard = self.shard(tenant);
        if let Some(c) = shard.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            c.last_seen
                .store(self.now.load(Ordering::Relaxed), Ordering::Relaxed);
            add(c);
            return;
        }
        if self.tenants.load(Ordering::Relaxed) >= self.max_tenants.load(Ordering::Relaxed) {
            add(&self.untracked);
            return;
        }
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(tenant.into()).or_insert_with(|| {
            self.tenants.fetch_add(1, Ordering::Relaxed);
            let c = Counters::default();
            let now = self.now.load(Ordering::Relaxed);
            c.first_seen.store(now, Ordering::Relaxed);
            c.last_seen.store(now, Ordering::Relaxed);
            Arc::new(c)
        });
        add(c);
    }

    fn add(c: &Counters, s: &Sample) {
        c.requests.fetch_add(1, Ordering::Relaxed);
        let class = match s.status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        c.classes[class].fetch_add(1, Ordering::Relaxed);
        if s.ratelimited {
            c.ratelimited.fetch_add(1, Ordering::Relaxed);
        }
        if s.overloaded {
            c.overloaded.fetch_add(1, Ordering::Relaxed);
        }
        let k = class_of(s.seconds);
        c.latency[k].fetch_add(1, Ordering::Relaxed);
        c.recent[k].fetch_add(1, Ordering::Relaxed);
    }

    /// Applies `[tenant_stats]` (the cap and the idle eviction; K and the interval are read by the
    /// recomputing task).
    pub fn configure(&self, s: &Settings) {
        self.max_tenants.store(s.max_tenants, Ordering::Relaxed);
        self.idle_evict_secs
            .store(s.idle_evict.as_secs().max(1), Ordering::Relaxed);
    }

    /// Drops the tenants not seen for `idle_evict` (as of the clock of the last ranking).
    fn evict_idle(&self) {
        let now = self.now.load(Ordering::Relaxed);
        let idle = self.idle_evict_secs.load(Ordering::Relaxed);
        let Some(cutoff) = now.checked_sub(idle) else {
            return;
        };
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, c| c.last_seen.load(Ordering::Relaxed) >= cutoff);
            let evicted = before - map.len();
            if evicted > 0 {
                self.tenants.fetch_sub(evicted, Ordering::Relaxed);
            }
        }
    }

    /// Tenants counted exactly.
    pub fn tenants(&self) -> usize {
        self.tenants.load(Ordering::Relaxed)
    }

    /// Exact figures of `tenant` (zeros for a tenant never seen; `tracked: false` when it arrived after
    /// the cap).
    pub fn stats_json(&self, tenant: &str) -> serde_json::Value {
        let c = self
            .shard(tenant)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned();
        let full = self.tenants() >= self.max_tenants.load(Ordering::Relaxed);
        let Some(c) = c else {
            return serde_json::json!({
                "tenant": tenant,
                "seen": false,
                "tracked": !full,
                "requests": 0,
            });
        };
        let [requests, errors, ratelimited, overloaded] = c.totals();
        let lat: [u64; CLASSES] =
            std::array::from_fn(|i| u64::from(c.latency[i].load(Ordering::Relaxed)));
        let class = |i: usize| c.classes[i].load(Ordering::Relaxed);
        serde_json::json!({
            "tenant": tenant,
            "seen": true,
            "tracked": true,
            "requests": requests,
            "responses": { "1xx": class(0), "2xx": class(1), "3xx": class(2), "4xx": class(3), "5xx": class(4) },
            "error_ratio": if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            "ratelimited": ratelimited,
            "overloaded": overloaded,
            "p50_seconds": quantile(&lat, 0.50),
            "p99_seconds": quantile(&lat, 0.99),
            "first_seen": c.first_seen.load(Ordering::Relaxed),
            "last_seen": c.last_seen.load(Ordering::Relaxed),
        })
    }

    /// The top `k` tenants by requests (exact, by total), for the dashboard page.
    pub fn top(&self, k: usize) -> Vec<(String, [u64; TOTALS])> {
        let mut all: Vec<(String, [u64; TOTALS])> = Vec::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            all.extend(map.iter().map(|(t, c)| (t.to_string(), c.totals())));
        }
        all.sort_unstable_by(|a, b| b.1[0].cmp(&a.1[0]).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Ranks the tenants again and rebuilds the Prometheus lines: the top `k` by requests, and `other`.
    pub fn recompute(&self, k: usize) {
        self.now.store(now_secs(), Ordering::Relaxed);
        // One pass over every shard: totals, what each added since the last pass, recent latency.
        struct Row {
            tenant: Box<str>,
            totals: [u64; TOTALS],
            added: [u64; TOTALS],
            recent: [u64; CLASSES],
        }
        let mut rows: Vec<Row> = Vec::with_capacity(self.tenants());
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            for (t, c) in map.iter() {
                let totals = c.totals();
                let added: [u64; TOTALS] = std::array::from_fn(|i| {
                    totals[i].saturating_sub(c.reported[i].swap(totals[i], Ordering::Relaxed))
                });
                let recent: [u64; CLASSES] = std::array::from_fn(|i| {
                    let n = c.recent[i].load(Ordering::Relaxed);
                    c.recent[i].fetch_sub(n, Ordering::Relaxed);
                    u64::from(n)
                });
                rows.push(Row {
                    tenant: t.clone(),
                    totals,
                    added,
                    recent,
                });
            }
        }
        // Rows are taken: what the idle tenants added is counted in this pass; then they leave.
        self.evict_idle();
        let k = k.min(rows.len());
        if k > 0 && k < rows.len() {
            rows.select_nth_unstable_by(k - 1, |a, b| {
                b.totals[0]
                    .cmp(&a.totals[0])
                    .then_with(|| a.tenant.cmp(&b.tenant))
            });
        }
        let (top, rest) = rows.split_at_mut(k);
        top.sort_unstable_by(|a, b| {
            b.totals[0]
                .cmp(&a.totals[0])
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        // `other`: the tenants not named now, plus those beyond the cap.
        let untracked = self.untracked.totals();
        let untracked_added: [u64; TOTALS] = std::array::from_fn(|i| {
            untracked[i]
                .saturating_sub(self.untracked.reported[i].swap(untracked[i], Ordering::Relaxed))
        });
        let mut other_recent: [u64; CLASSES] = std::array::from_fn(|i| {
            let n = self.untracked.recent[i].load(Ordering::Relaxed);
            self.untracked.recent[i].fetch_sub(n, Ordering::Relaxed);
            u64::from(n)
        });
        let other = {
            let mut o = self.other.lock().unwrap_or_else(|p| p.into_inner());
            for r in rest.iter() {
                for i in 0..TOTALS {
                    o[i] += r.added[i];
                }
                for (sum, n) in other_recent.iter_mut().zip(&r.recent) {
                    *sum += n;
                }
            }
            for i in 0..TOTALS {
                o[i] += untracked_added[i];
            }
            *o
        };
        let mut out = String::with_capacity(256 * (k + 1));
        let series: [(&str, &str, &str); TOTALS + 1] = [
            ("gateway_tenant_requests_total", "counter", "Requests of the top tenants by requests, and of all others as `other`."),
            ("gateway_tenant_errors_total", "counter", "5xx answers (or none) of the top tenants, and of all others as `other`."),
            ("gateway_tenant_ratelimited_total", "counter", "Rate-limit refusals of the top tenants, and of all others as `other`."),
            ("gateway_tenant_overloaded_total", "counter", "Overload refusals (no upstream slot in time) of the top tenants, and of all others as `other`."),
            ("gateway_tenant_p99_seconds", "gauge", "p99 latency over the last interval of the top tenants, and of all others as `other`."),
        ];
        for (i, (name, kind, help)) in series.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in top.iter() {
                let value = if i < TOTALS {
                    r.totals[i] as f64
                } else {
                    quantile(&r.recent, 0.99)
                };
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {value}", escape(&r.tenant));
            }
            let value = if i < TOTALS {
                other[i] as f64
            } else {
                quantile(&other_recent, 0.99)
            };
            let _ = writeln!(out, "{name}{{tenant=\"other\"}} {value}");
        }
        self.exposition.store(Arc::new(out));
    }

    /// The Prometheus lines of the last recomputation.
    pub fn exposition(&self) -> Arc<String> {
        self.exposition.load_full()
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(status: u16, ms: f64) -> Sample {
        Sample {
            status,
            seconds: ms / 1e3,
            ratelimited: status == 429,
            overloaded: false,
        }
    }

    #[test]
    fn exact_per_tenant_and_top_k_plus_other_in_prometheus() {
        let s = TenantStats::default();
        for t in 0..1000 {
            s.record(&format!("t{t}"), &sample(200, 1.0));
        }
        for _ in 0..50 {
            s.record("big", &sample(200, 3.0));
        }
        for _ in 0..30 {
            s.record("mid", &sample(503, 40.0));
        }
        for _ in 0..20 {
            s.record("small", &sample(429, 1.0));
        }
        s.recompute(3);
        let text = s.exposition();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gateway_tenant_requests_total{"))
            .collect();
        assert_eq!(
            names,
            vec![
                "gateway_tenant_requests_total{tenant=\"big\"} 50",
                "gateway_tenant_requests_total{tenant=\"mid\"} 30",
                "gateway_tenant_requests_total{tenant=\"small\"} 20",
                "gateway_tenant_requests_total{tenant=\"other\"} 1000",
            ]
        );
        // Five metrics (requests, errors, rate-limited, overloaded, p99) × (K + other).
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 20);
        assert!(text.contains("gateway_tenant_errors_total{tenant=\"mid\"} 30"));
        assert!(text.contains("gateway_tenant_ratelimited_total{tenant=\"small\"} 20"));
        assert!(text.contains("gateway_tenant_p99_seconds{tenant=\"mid\"} 0.064"));
        let mid = s.stats_json("mid");
        assert_eq!(mid["requests"], 30);
        assert_eq!(mid["responses"]["5xx"], 30);
        assert_eq!(mid["error_ratio"], 1.0);
        assert_eq!(s.stats_json("t7")["requests"], 1);
        assert_eq!(s.stats_json("never")["seen"], false);
    }

    /// #23 point 6: requests refused before auth count in `other`, never as a tenant of their own, and
    /// idle tenants leave the table, so a real new tenant is tracked exactly after a flood.
    #[test]
    fn unadmitted_requests_and_idle_tenants_leave_room_for_real_ones() {
        let s = TenantStats::default();
        s.configure(&Settings {
            top_k: 2,
            interval: Duration::from_secs(15),
            max_tenants: 10,
            idle_evict: Duration::from_secs(600),
        });
        for t in 0..1000 {
            s.record_unadmitted(&sample(401, 1.0));
            assert_eq!(s.stats_json(&format!("rnd{t}"))["seen"], false);
        }
        assert_eq!(s.tenants(), 0);
        s.record("real", &sample(200, 1.0));
        assert_eq!(s.stats_json("real")["tracked"], true);
        assert_eq!(s.stats_json("real")["requests"], 1);
        s.recompute(2);
        assert!(s
            .exposition()
            .contains("gateway_tenant_requests_total{tenant=\"other\"} 1000"));

        // Admitted tenants fill the table; once idle past `idle_evict`, they make room.
        for t in 0..9 {
            s.record(&format!("old{t}"), &sample(200, 1.0));
        }
        assert_eq!(s.tenants(), 10);
        s.record("late", &sample(200, 1.0));
        assert_eq!(s.stats_json("late")["tracked"], false, "the table is full");
        let now = s.now.load(Ordering::Relaxed);
        for shard in &s.shards {
            for c in shard.read().unwrap_or_else(|p| p.into_inner()).values() {
                c.last_seen.store(now - 601, Ordering::Relaxed);
            }
        }
        s.recompute(2);
        assert_eq!(s.tenants(), 0, "every idle tenant was evicted");
        s.record("late", &sample(200, 1.0));
        assert_eq!(s.stats_json("late")["tracked"], true);
        assert_eq!(s.stats_json("late")["requests"], 1);
    }

    #[test]
    fn latency_classes_are_the_first_bound_at_or_above() {
        for ms in [
            0.0, 0.1, 0.5, 0.51, 1.0, 1.2, 3.0, 64.0, 65.0, 999.0, 16_384.0, 99_999.0,
        ] {
            let s = ms / 1e3;
            let want = (0..CLASSES)
                .find(|i| s <= class_bound(*i))
                .unwrap_or(CLASSES - 1);
            assert_eq!(class_of(s), want, "{ms} ms");
        }
    }

    #[test]
    fn other_only_grows_when_tenants_enter_the_top() {
        let s = TenantStats::default();
        s.record("a", &sample(200, 1.0));
        s.record("b", &sample(200, 1.0));
        s.recompute(1);
        let other = |s: &TenantStats| -> f64 {
            s.exposition()
                .lines()
                .find_map(|l| l.strip_prefix("gateway_tenant_requests_total{tenant=\"other\"} "))
                .and_then(|v| v.parse().ok())
                .expect("other")
        };
        assert_eq!(other(&s), 1.0);
        // b overtakes a: a's next request counts in other; b's old one stays counted there once.
        for _ in 0..3 {
            s.record("b", &sample(200, 1.0));
        }
        s.record("a", &sample(200, 1.0));
        s.recompute(1);
        assert_eq!(other(&s), 2.0, "other must never decrease");
    }

    #[test]
    fn beyond_the_cap_new_tenants_count_in_other_only() {
        let s = TenantStats::default();
        s.configure(&Settings {
            top_k: 2,
            interval: Duration::from_secs(1),
            max_tenants: 10,
            idle_evict: Duration::from_secs(3600),
        });
        for t in 0..100 {
            s.record(&format!("r{t}"), &sample(200, 1.0));
        }
        assert_eq!(s.tenants(), 10);
        assert_eq!(s.stats_json("r50")["tracked"], false);
        s.recompute(2);
        assert!(s
            .exposition()
            .contains("gateway_tenant_requests_total{tenant=\"other\"} 98"));
    }
}
