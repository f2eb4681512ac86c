//! Canary releases with automatic rollback at the edge.
//!
//! A route with `canary = { upstream = "…", weight = N }` sends N % of its requests to the canary
//! upstream (sticky per client or per tenant, or chosen per request), unless a header or cookie picks the
//! side (`canary` or `stable`). Every upstream answer is recorded per side in a sliding window; after
//! each answer of the canary, the canary is judged against the stable upstream over the window: a 5xx
//! ratio above the stable's plus `max_error_ratio`, or a p99 above `max_p99_ratio` times the stable's,
//! rolls it back (weight 0 until the route's canary settings change), logs why and counts it in
//! `gateway_canary_rollbacks_total{route}`. A 5xx from the canary to an idempotent request is not
//! passed on: the request is retried on the stable upstream (see `edge::retry`). Blue-green is the same
//! mechanism at weight 0 or 100.
//!
//! The request path touches only atomics: the side is a hash of the client (or tenant), and recording an
//! answer is a few relaxed increments in the current bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::{CanarySpec, Sticky};
use crate::support::hash64;
use crate::telemetry::metrics::metrics;
use crate::upstream::Upstream;

/// Which upstream a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    #[default]
    Stable,
    Canary,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }
}

/// Buckets of a sliding window.
const BUCKETS: usize = 10;
/// Latency classes: upper bounds 100 µs × 1.5^i, up to ~29 s.
const LATENCY_CLASSES: usize = 32;
/// A canary is not rolled back for a p99 within this much of the stable's, whatever the ratio: at
/// sub-millisecond latencies a ratio alone would judge noise.
const P99_FLOOR: Duration = Duration::from_millis(5);

fn class_bound(i: usize) -> Duration {
    Duration::from_secs_f64(100e-6 * 1.5f64.powi(i as i32))
}

fn class_of(latency: Duration) -> usize {
    (0..LATENCY_CLASSES)
        .find(|i| latency <= class_bound(*i))
        .unwrap_or(LATENCY_CLASSES - 1)
}

#[derive(Default)]
struct Bucket {
    /// Which bucket period the counts belong to.
    epoch: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_CLASSES],
}

/// Answers of one side over the last `window`, in [`BUCKETS`] buckets.
struct Window {
    buckets: [Bucket; BUCKETS],
    bucket: Duration,
    start: Instant,
}

/// A side's figures over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// Upper bound of the latency class holding the 99th percentile.
    pub p99: Duration,
}

impl Figures {
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl Window {
    fn new(window: Duration, start: Instant) -> Window {
        Window {
            buckets: std::array::from_fn(|_| Bucket::default()),
            bucket: (window / BUCKETS as u32).max(Duration::from_millis(10)),
            start,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        // Epoch 0 is "never written": real epochs start at 1.
        (now.duration_since(self.start).as_nanos() / self.bucket.as_nanos()) as u64 + 1
    }

    fn record(&self, now: Instant, error: bool, latency: Duration) {
        let e = self.epoch(now);
        let b = &self.buckets[(e % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != e
            && b.epoch
                .compare_exchange(seen, e, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This bucket held an older period: start it over (a count racing with the reset may be
            // lost, which a health signal can afford).
            b.total.store(0, Ordering::Relaxed);
            b.errors.store(0, Ordering::Relaxed);
            for c in &b.latency {
                c.store(0, Ordering::Relaxed);
            }
        }
        b.total.fetch_add(1, Ordering::Relaxed);
        if error {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
        b.latency[class_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    fn figures(&self, now: Instant) -> Figures {
        let e = self.epoch(now);
        let mut f = Figures::default();
        let mut classes = [0u64; LATENCY_CLASSES];
        for b in &self.buckets {
            let be = b.epoch.load(Ordering::Acquire);
            if be == 0 || be > e || e - be >= BUCKETS as u64 {
                continue;
            }
            f.requests += b.total.load(Ordering::Relaxed);
            f.errors += b.errors.load(Ordering::Relaxed);
            for (sum, c) in classes.iter_mut().zip(&b.latency) {
                *sum += u64::from(c.load(Ordering::Relaxed));
            }
        }
        let counted: u64 = classes.iter().sum();
        if counted > 0 {
            let rank = (counted as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, n) in classes.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    f.p99 = class_bound(i);
                    break;
                }
            }
        }
        f
    }
}

/// Why a canary was rolled back.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reason: String,
    /// Unix seconds.
    pub at: f64,
}

/// A canary's live state: its figures, its effective weight and, once rolled back, why. Shared by
/// successive configs while the route's canary settings stay the same.
pub struct CanaryState {
    route: String,
    spec: CanarySpec,
    weight: AtomicU8,
    rolled_back: AtomicBool,
    verdict: Mutex<Option<Verdict>>,
    stable: Window,
    canary: Window,
}

impl CanaryState {
    fn new(route: &str, spec: &CanarySpec) -> CanaryState {
        let start = Instant::now();
        metrics()
            .canary_weight
            .with_label_values(&[route])
            .set(i64::from(spec.weight));
        CanaryState {
            route: route.to_string(),
            spec: spec.clone(),
            weight: AtomicU8::new(spec.weight),
            rolled_back: AtomicBool::new(false),
            verdict: Mutex::new(None),
            stable: Window::new(spec.window, start),
            canary: Window::new(spec.window, start),
        }
    }

    /// The share of traffic the canary gets now (0 after a rollback).
    pub fn weight(&self) -> u8 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Why the canary was rolled back, if it was.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Both sides' figures over the window.
    pub fn figures(&self) -> (Figures, Figures) {
        let now = Instant::now();
        (self.stable.figures(now), self.canary.figures(now))
    }

    /// Records one upstream answer (or failure to answer, as a 5xx) of `side`; judges the canary after
    /// each of its answers.
    pub fn record(&self, side: Side, error: bool, latency: Duration) {
        let now = Instant::now();
        match side {
            Side::Stable => self.stable.record(now, error, latency),
            Side::Canary => {
                self.canary.record(now, error, latency);
                if !self.rolled_back.load(Ordering::Relaxed) {
                    if let Some(reason) = self.judge(now) {
                        self.roll_back(reason);
                    }
                }
            }
        }
    }

    /// Why the canary should be rolled back now, if it should.
    fn judge(&self, now: Instant) -> Option<String> {
        let c = self.canary.figures(now);
        if c.requests < self.spec.min_requests {
            return None;
        }
        let s = self.stable.figures(now);
        let window = self.spec.window.as_secs_f64();
        if c.error_ratio() > s.error_ratio() + self.spec.max_error_ratio {
            return Some(format!(
                "5xx ratio {:.3} ({} of {} answers in the last {window}s) above the stable upstream's {:.3} + {}",
                c.error_ratio(),
                c.errors,
                c.requests,
                s.error_ratio(),
                self.spec.max_error_ratio
            ));
        }
        if s.requests >= self.spec.min_requests
            && c.p99.as_secs_f64() > s.p99.as_secs_f64() * self.spec.max_p99_ratio
            && c.p99 > s.p99 + P99_FLOOR
        {
            return Some(format!(
                "p99 {:.1} ms above {} × the stable upstream's {:.1} ms (last {window}s, {} and {} answers)",
                c.p99.as_secs_f64() * 1e3,
                self.spec.max_p99_ratio,
                s.p99.as_secs_f64() * 1e3,
                c.requests,
                s.requests
            ));
        }
        None
    }

    fn roll_back(&self, reason: String) {
        if self.rolled_back.swap(true, Ordering::AcqRel) {
            return;
        }
        self.weight.store(0, Ordering::Relaxed);
        tracing::warn!(
            route = %self.route,
            canary = %self.spec.upstream,
            reason = %reason,
            "canary rolled back: its weight is now 0 (change the route's canary settings to release again)"
        );
        metrics()
            .canary_rollbacks
            .with_label_values(&[&self.route])
            .inc();
        metrics()
            .canary_weight
            .with_label_values(&[&self.route])
            .set(0);
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verdict {
            reason,
            at: crate::support::unix_now(),
        });
    }

    /// The side for a request, and whether an override forced it: by the header or cookie from a trusted
    /// proxy or with the override secret (never into a canary at weight 0 unless `force_at_zero`), else
    /// by weight (sticky as configured). Forced requests are kept out of the verdict.
    pub fn side(
        &self,
        headers: &HeaderMap,
        tenant: Option<&str>,
        client: Option<IpAddr>,
        trusted_peer: bool,
    ) -> (Side, bool) {
        if self.rolled_back.load(Ordering::Relaxed) {
            return (Side::Stable, false);
        }
        let weight = u64::from(self.weight());
        if let Some(forced) = self.forced(headers, trusted_peer) {
            if forced == Side::Stable || weight > 0 || self.spec.force_at_zero {
                return (forced, true);
            }
        }
        if weight == 0 {
            return (Side::Stable, false);
        }
        if weight >= 100 {
            return (Side::Canary, false);
        }
        let slot = match (self.spec.sticky, tenant, client) {
            (Sticky::None, _, _) => fastrand::u64(..100),
            (Sticky::Tenant, Some(t), _) => hash64(t.as_bytes()) % 100,
            (_, _, Some(IpAddr::V4(ip))) => hash64(&ip.octets()) % 100,
            (_, _, Some(IpAddr::V6(ip))) => hash64(&ip.octets()) % 100,
            (_, _, None) => fastrand::u64(..100),
        };
        if slot < weight {
            (Side::Canary, false)
        } else {
            (Side::Stable, false)
        }
    }

    /// The side an override asks for, when this client may override: `canary`/`stable` from a trusted
    /// proxy, `canary:SECRET`/`stable:SECRET` from anyone (the secret compared in constant time).
    fn forced(&self, headers: &HeaderMap, trusted_peer: bool) -> Option<Side> {
        let secret = self.spec.override_secret.as_deref();
        if !trusted_peer && secret.is_none() {
            return None;
        }
        let pick = |v: &[u8]| {
            let (side, given) = match v.iter().position(|b| *b == b':') {
                Some(i) => (&v[..i], Some(&v[i + 1..])),
                None => (v, None),
            };
            let allowed = match (given, secret) {
                (Some(g), Some(s)) => bool::from(subtle::ConstantTimeEq::ct_eq(g, s.as_bytes())),
                (None, _) => trusted_peer,
                (Some(_), None) => false,
            };
            match (side, allowed) {
                (b"canary", true) => Some(Side::Canary),
                (b"stable", true) => Some(Side::Stable),
                _ => None,
            }
        };
        if let Some(h) = &self.spec.header {
            if let Some(side) = headers.get(h).and_then(|v| pick(v.as_bytes())) {
                return Some(side);
            }
        }
        let name = self.spec.cookie.as_deref()?;
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| pick(&pair[eq + 1..]))?
            })
            .next()
    }
}

/// A route's canary: its settings, upstream and state.
pub struct Canary {
    pub spec: CanarySpec,
    pub upstream: Arc<Upstream>,
    pub state: Arc<CanaryState>,
}

/// Canary states by route, kept across reloads while a route's canary settings do not change (a
/// rollback survives an unrelated reload; new settings start a new release).
#[derive(Default)]
pub struct CanaryRegistry {
    states: Mutex<HashMap<String, Weak<CanaryState>>>,
}

impl CanaryRegistry {
    pub fn get_or_create(&self, route: &str, spec: &CanarySpec) -> Arc<CanaryState> {
        let mut map = self.states.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(route).and_then(Weak::upgrade) {
            if s.spec == *spec {
                return s;
            }
        }
        let s = Arc::new(CanaryState::new(route, spec));
        map.insert(route.to_string(), Arc::downgrade(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weight: u8) -> CanarySpec {
        CanarySpec {
            upstream: "c".into(),
            weight,
            header: Some(http::HeaderName::from_static("x-canary")),
            cookie: Some("canary".into()),
            sticky: Sticky::Client,
            window: Duration::from_secs(60),
            min_requests: 10,
            max_error_ratio: 0.05,
            max_p99_ratio: 2.0,
            override_secret: None,
            force_at_zero: false,
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn weight_splits_sticky_per_client_and_header_or_cookie_forces_a_side() {
        let s = CanaryState::new("t-split", &spec(30));
        let h = HeaderMap::new();
        let mut canary = 0;
        for last in 0..=255u8 {
            let side = s.side(&h, None, ip(last), false);
            for _ in 0..3 {
                assert_eq!(s.side(&h, None, ip(last), false), side, "sticky per client");
            }
            canary += usize::from(side.0 == Side::Canary);
        }
        assert!(
            (40..=115).contains(&canary),
            "{canary} of 256 clients on the canary"
        );
        let mut forced = HeaderMap::new();
        forced.insert("x-canary", "canary".parse().expect("value"));
        let mut cookie = HeaderMap::new();
        cookie.insert("cookie", "a=b; canary=stable".parse().expect("value"));
        let all = CanaryState::new("t-all", &spec(100));
        assert_eq!(
            all.side(&HeaderMap::new(), None, ip(1), false),
            (Side::Canary, false)
        );
        // From a trusted proxy, the header or cookie forces a side (and says so).
        assert_eq!(all.side(&cookie, None, ip(1), true), (Side::Stable, true));
        let half = CanaryState::new("t-half", &spec(50));
        assert_eq!(half.side(&forced, None, ip(1), true), (Side::Canary, true));
    }

    /// #23 point 9: an untrusted client cannot force a side, not even with a wrong secret; with the
    /// secret it can; nobody forces a canary at weight 0 unless `force_at_zero`.
    #[test]
    fn overrides_need_a_trusted_peer_or_the_secret_and_never_open_weight_zero() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-canary", value.parse().expect("value"));
            h
        };
        let plain = CanaryState::new("t-untrusted", &spec(50));
        for last in 0..50u8 {
            let (_, forced) = plain.side(&with("canary"), None, ip(last), false);
            assert!(!forced, "an untrusted client forced a side");
        }
        let secret = CanarySpec {
            override_secret: Some("0123456789abcdef".into()),
            ..spec(50)
        };
        let s = CanaryState::new("t-secret", &secret);
        assert_eq!(
            s.side(&with("canary:0123456789abcdef"), None, ip(1), false),
            (Side::Canary, true)
        );
        assert!(
            !s.side(&with("canary:0123456789abcdeX"), None, ip(1), false)
                .1
        );
        assert!(!s.side(&with("canary"), None, ip(1), false).1);
        let off = CanaryState::new("t-off", &spec(0));
        assert_eq!(
            off.side(&with("canary"), None, ip(1), true),
            (Side::Stable, false)
        );
        let opened = CanaryState::new(
            "t-open",
            &CanarySpec {
                force_at_zero: true,
                ..spec(0)
            },
        );
        assert_eq!(
            opened.side(&with("canary"), None, ip(1), true),
            (Side::Canary, true)
        );
    }

    #[test]
    fn errors_above_the_stable_ratio_roll_back_after_min_requests() {
        let s = CanaryState::new("t-errors", &spec(50));
        for _ in 0..100 {
            s.record(Side::Stable, false, Duration::from_millis(1));
        }
        for i in 0..9 {
            s.record(Side::Canary, i % 2 == 0, Duration::from_millis(1));
        }
        assert!(s.verdict().is_none(), "judged before min_requests");
        s.record(Side::Canary, true, Duration::from_millis(1));
        let v = s.verdict().expect("rolled back");
        assert!(v.reason.contains("5xx ratio 0.600"), "{}", v.reason);
        assert_eq!(s.weight(), 0);
        let mut forced = HeaderMap::new();
        forced.insert("x-canary", "canary".parse().expect("value"));
        assert_eq!(
            s.side(&forced, None, ip(1), true).0,
            Side::Stable,
            "nothing reaches a rolled-back canary"
        );
    }

    #[test]
    fn a_slow_canary_rolls_back_a_slightly_slower_one_does_not() {
        let s = CanaryState::new("t-slow", &spec(50));
        for _ in 0..50 {
            s.record(Side::Stable, false, Duration::from_millis(10));
            s.record(Side::Canary, false, Duration::from_millis(15));
        }
        assert!(s.verdict().is_none(), "1.5× the stable's p99 is within 2×");
        for _ in 0..10 {
            s.record(Side::Canary, false, Duration::from_millis(300));
        }
        let v = s.verdict().expect("rolled back");
        assert!(v.reason.starts_with("p99"), "{}", v.reason);
        // Sub-millisecond noise is not judged by ratio alone.
        let fast = CanaryState::new("t-fast", &spec(50));
        for _ in 0..50 {
            fast.record(Side::Stable, false, Duration::from_micros(100));
            fast.record(Side::Canary, false, Duration::from_micros(900));
        }
        assert!(fast.verdict().is_none());
    }

    #[test]
    fn the_window_forgets_old_answers() {
        let w = Window::new(Duration::from_millis(100), Instant::now());
        let t0 = Instant::now();
        for _ in 0..5 {
            w.record(t0, true, Duration::from_millis(1));
        }
        assert_eq!(w.figures(t0).errors, 5);
        let later = t0 + Duration::from_millis(150);
        assert_eq!(w.figures(later), Figures::default());
        w.record(later, false, Duration::from_millis(2));
        let f = w.figures(later);
        assert_eq!((f.requests, f.errors), (1, 0));
        assert!(f.p99 >= Duration::from_millis(2) && f.p99 < Duration::from_millis(4));
    }

    #[test]
    fn a_registry_keeps_the_state_while_the_settings_stay() {
        let reg = CanaryRegistry::default();
        let a = reg.get_or_create("r", &spec(10));
        let b = reg.get_or_create("r", &spec(10));
        assert!(Arc::ptr_eq(&a, &b));
        let c = reg.get_or_create("r", &spec(20));
        assert!(!Arc::ptr_eq(&a, &c), "new settings, new release");
    }
}
