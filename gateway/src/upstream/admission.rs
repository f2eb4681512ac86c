//! Admission to an upstream: a concurrency limit per upstream (fixed, or following the upstream's
//! latency), a bounded queue with a deadline in front of it, and tenants served from that queue in fair
//! order, so that one tenant's flood cannot take another tenant's share of the upstream.
//!
//! The fast path — a free slot and nobody waiting — is two atomic operations and no lock. Only when the
//! limit is reached does a request take the queue's lock and wait (a oneshot, at most the deadline).
//! A released slot goes to the next waiter in round-robin order over the waiting classes (a tenant, or a
//! client address for requests without one): each waiting class gets one slot in turn, however many
//! requests it queued. When the queue is full, the class with the most waiters loses its newest one to
//! make room, so a flood fills the queue only with itself.
//!
//! The adaptive limit is the gradient algorithm of Netflix's concurrency-limits (as in Envoy's adaptive
//! concurrency filter): over each window of samples, `gradient = clamp(TOLERANCE × rtt_noload / rtt,
//! 0.5, 1)` and `limit ← limit × gradient + √limit`, within `[min, max]`. `rtt_noload` is measured by a
//! probe, first at the first window and then every [`PROBE_INTERVAL`]: the limit drops to
//! [`PROBE_CONCURRENCY`] (or `min` if lower) for two windows (as Envoy's minRTT calculation does), the
//! first lets what was in flight drain, the second's average latency is the new `rtt_noload`, and the
//! limit goes back to where it was. (The lowest window seen is no baseline: it is an outlier of the
//! noise, and the limit then settled below what the upstream serves.) A baseline that drifted
//! with every window instead followed a sustained overload up (a window every few ms, doubling in
//! about a second) until the limit was back at `max` and the upstream buried again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::ConcurrencySpec;
use crate::telemetry::metrics::metrics;

/// Latency may rise this much over the no-load baseline before the limit shrinks: at the equilibrium
/// a request waits about this much longer than at no load. (1.5 held the victim of a noisy neighbour
/// closer to its latency alone, but the latency a proxy adds itself as its concurrency grows — its own
/// event loop — then kept the limit of a fast upstream below what it serves.)
const TOLERANCE: f64 = 2.0;
/// The concurrency of a probe of the no-load latency (at most `min`): low enough that the upstream
/// queues nothing (Envoy's `min_concurrency` is 3).
const PROBE_CONCURRENCY: f64 = 4.0;
/// How often the no-load latency is measured again (a slower upstream becomes the new normal within
/// this long).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// Samples per window: the current limit, within these bounds.
const MIN_WINDOW: u32 = 16;
const MAX_WINDOW: u32 = 64;

/// Why a request was refused admission (the `reason` label of `gateway_overload_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full and this class had the most waiters.
    QueueFull,
    /// No slot within `[overload] queue_timeout`.
    Deadline,
    /// The gateway's own core is saturated and the request's class (tenant, else client) stayed over
    /// its share for `[overload] queue_timeout` (`edge::backpressure`).
    Core,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::Deadline => "deadline",
            Refusal::Core => "core",
        }
    }
}

/// The gradient limiter's state (behind a lock taken once per window, never on the fast path).
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Draining: the requests admitted above the probe's concurrency are still in flight; their
    /// latencies say nothing about no load. Then one window is measured.
    draining: bool,
    back: f64,
    since: Instant,
}

/// A probe whose drain takes longer than this (long requests holding their slots) is given up: the
/// limit goes back, the baseline stays, and the next probe is in [`PROBE_INTERVAL`].
const PROBE_DRAIN_MAX: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Gradient {
    pub limit: f64,
    rtt_noload: Option<f64>,
    /// When the next probe of the no-load latency starts.
    next_probe: Option<Instant>,
    /// A probe in progress: its phase, the limit to go back to, and when it began.
    probe: Option<Probe>,
}

impl Gradient {
    pub fn new(initial: f64) -> Gradient {
        Gradient {
            limit: initial,
            rtt_noload: None,
            next_probe: None,
            probe: None,
        }
    }

    /// Starts a probe of the no-load latency.
    fn start_probe(&mut self, lo: f64, now: Instant) {
        self.next_probe = Some(now + PROBE_INTERVAL);
        self.probe = Some(Probe {
            draining: true,
            back: self.limit,
            since: now,
        });
        self.limit = lo.min(PROBE_CONCURRENCY);
    }

    /// One window's average latency (seconds), closed at `now` with `in_flight` requests holding a
    /// slot → the new limit, within `[min, max]`.
    pub fn update(&mut self, rtt: f64, min: u32, max: u32, now: Instant, in_flight: u32) -> u32 {
        let (lo, hi) = (f64::from(min.max(1)), f64::from(max.max(1)));
        if let Some(p) = self.probe {
            if p.draining {
                if f64::from(in_flight) <= self.limit {
                    // Drained: the next window is measured at the probe's concurrency.
                    self.probe = Some(Probe {
                        draining: false,
                        ..p
                    });
                } else if now.duration_since(p.since) > PROBE_DRAIN_MAX {
                    self.probe = None;
                    self.limit = p.back.clamp(lo, hi);
                }
                return self.limit as u32;
            }
            self.probe = None;
            self.rtt_noload = Some(rtt);
            self.limit = p.back.clamp(lo, hi);
            return self.limit as u32;
        }
        let Some(noload) = self.rtt_noload else {
            // No baseline yet: probe for one first.
            self.start_probe(lo, now);
            return self.limit as u32;
        };
        let gradient = (TOLERANCE * noload / rtt.max(1e-9)).clamp(0.5, 1.0);
        let next = self.limit * gradient + self.limit.sqrt();
        self.limit = next.clamp(lo, hi);
        match self.next_probe {
            None => self.next_probe = Some(now + PROBE_INTERVAL),
            Some(t) if now >= t => self.start_probe(lo, now),
            Some(_) => {}
        }
        self.limit as u32
    }

    /// A failure (connection refused, timeout) counts as overload: the limit shrinks by a tenth.
    pub fn failed(&mut self, min: u32, max: u32) -> u32 {
        self.limit = (self.limit * 0.9).clamp(f64::from(min.max(1)), f64::from(max.max(1)));
        self.limit as u32
    }
}

/// A waiter: its class, and where its slot is sent.
struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

/// One class's waiters, its weight (slots per turn), and what is left of its current turn.
struct ClassQueue {
    waiters: VecDeque<Waiter>,
    weight: u32,
    credit: u32,
}

/// Waiters by class, served round robin over the classes that wait, a class of weight `w` (a tenant's
/// plan's concurrency weight) taking up to `w` slots in a row per turn.
#[derive(Default)]
pub struct FairQueue {
    classes: HashMap<String, ClassQueue>,
    /// Classes with waiters, in serving order.
    turn: VecDeque<String>,
    len: usize,
}

impl FairQueue {
    fn push(&mut self, class: &str, weight: u32, w: Waiter) {
        let weight = weight.max(1);
        let q = match self.classes.get_mut(class) {
            Some(q) => q,
            None => {
                self.turn.push_back(class.to_string());
                self.classes
                    .entry(class.to_string())
                    .or_insert_with(|| ClassQueue {
                        waiters: VecDeque::new(),
                        weight,
                        credit: weight,
                    })
            }
        };
        q.weight = weight;
        q.waiters.push_back(w);
        self.len += 1;
    }

    /// The next waiter: the first of the class whose turn it is; that class goes to the back once it
    /// has had its weight's worth of slots (or has no more waiters).
    fn pop(&mut self) -> Option<Waiter> {
        let class = self.turn.front()?.clone();
        let q = self.classes.get_mut(&class)?;
        let w = q.waiters.pop_front();
        q.credit = q.credit.saturating_sub(1);
        if q.waiters.is_empty() {
            self.classes.remove(&class);
            self.turn.pop_front();
        } else if q.credit == 0 {
            q.credit = q.weight;
            self.turn.pop_front();
            self.turn.push_back(class);
        }
        if w.is_some() {
            self.len -= 1;
        }
        w
    }

    /// Removes waiter `id` of `class` (its deadline passed); whether it was still there.
    fn remove(&mut self, class: &str, id: u64) -> bool {
        let Some(q) = self.classes.get_mut(class) else {
            return false;
        };
        let Some(i) = q.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        q.waiters.remove(i);
        self.len -= 1;
        if q.waiters.is_empty() {
            self.classes.remove(class);
            self.turn.retain(|c| c != class);
        }
        true
    }

    /// The class with the most waiters, and how many.
    fn largest(&self) -> Option<(&str, usize)> {
        self.classes
            .iter()
            .map(|(c, q)| (c.as_str(), q.waiters.len()))
            .max_by_key(|(_, n)| *n)
    }

    /// Drops the newest waiter of `class` (its receiver sees the queue refuse it).
    fn evict_newest(&mut self, class: &str) {
        if let Some(q) = self.classes.get_mut(class) {
            if q.waiters.pop_back().is_some() {
                self.len -= 1;
            }
            if q.waiters.is_empty() {
                self.classes.remove(class);
                self.turn.retain(|c| c != class);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One upstream's admission state, shared by the routes that use it and kept across reloads.
pub struct Admission {
    upstream: String,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// Waiters (mirrors the queue's length, read without its lock).
    queued: AtomicU32,
    queue: Mutex<FairQueue>,
    next_id: AtomicU64,
    spec: Mutex<ConcurrencySpec>,
    gradient: Mutex<Gradient>,
    /// The current window: samples and their total latency in microseconds.
    window_count: AtomicU32,
    window_us: AtomicU64,
    limit_gauge: prometheus::IntGauge,
    queue_gauge: prometheus::IntGauge,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("upstream", &self.upstream)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

/// A slot of an upstream's concurrency: returned when dropped, on every path.
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Slot {
    /// Whether this is a slot of `admission`.
    pub fn is_of(&self, admission: &Arc<Admission>) -> bool {
        Arc::ptr_eq(&self.0, admission)
    }

    /// The admission state it belongs to.
    pub fn admission(&self) -> &Admission {
        &self.0
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.0.upstream)
    }
}

impl Admission {
    pub fn new(upstream: &str, spec: &ConcurrencySpec) -> Arc<Admission> {
        // Adaptive, it starts open: the limit shrinks only once latency says so.
        let initial = spec.max;
        let m = metrics();
        let limit_gauge = m.upstream_concurrency_limit.with_label_values(&[upstream]);
        limit_gauge.set(i64::from(initial));
        Arc::new(Admission {
            upstream: upstream.to_string(),
            limit: AtomicU32::new(initial),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            queue: Mutex::new(FairQueue::default()),
            next_id: AtomicU64::new(0),
            spec: Mutex::new(spec.clone()),
            gradient: Mutex::new(Gradient::new(f64::from(initial))),
            window_count: AtomicU32::new(0),
            window_us: AtomicU64::new(0),
            limit_gauge,
            queue_gauge: m.upstream_queue_length.with_label_values(&[upstream]),
        })
    }

    /// A reload's settings: bounds apply at once; a fixed limit is set, an adaptive one kept within them.
    pub fn configure(&self, spec: &ConcurrencySpec) {
        let mut s = self.spec.lock().unwrap_or_else(|p| p.into_inner());
        if *s == *spec {
            return;
        }
        *s = spec.clone();
        let mut g = self.gradient.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if spec.adaptive {
            g.limit
                .clamp(f64::from(spec.min.max(1)), f64::from(spec.max.max(1)))
        } else {
            f64::from(spec.max)
        };
        g.limit = limit;
        self.set_limit(limit as u32);
    }

    fn set_limit(&self, limit: u32) {
        self.limit.store(limit.max(1), Ordering::Release);
        self.limit_gauge.set(i64::from(limit.max(1)));
        // A larger limit admits waiters at once (the queue's lock only when someone waits).
        if self.queued.load(Ordering::Acquire) != 0 {
            self.dispatch();
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes a slot if one is free and nobody waits (waiters come first): the fast path, two atomic
    /// operations and no lock.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let limit = self.limit.load(Ordering::Acquire);
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Slot(Arc::clone(self))),
                Err(now) => cur = now,
            }
        }
    }

    /// A slot for a request of `class` (of `weight`), waiting at most `deadline` in a queue of at most
    /// `max_queue`.
    pub async fn acquire(
        self: &Arc<Self>,
        class: &str,
        weight: u32,
        deadline: Duration,
        max_queue: usize,
    ) -> Result<Slot, Refusal> {
        match self.try_take() {
            Some(slot) => Ok(slot),
            None => self.wait(class, weight, deadline, max_queue).await,
        }
    }

    /// The slow path of [`Admission::acquire`]: queue as `class` (of `weight`: slots in a row per turn)
    /// and wait for a slot.
    pub async fn wait(
        self: &Arc<Self>,
        class: &str,
        weight: u32,
        deadline: Duration,
        max_queue: usize,
    ) -> Result<Slot, Refusal> {
        let started = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= max_queue.max(1) {
                // Room is made by the class with the most waiters; when that is this class, it is
                // refused itself.
                let mine = q.classes.get(class).map_or(0, |c| c.waiters.len());
                match q.largest() {
                    Some((big, n)) if n > mine + 1 => {
                        let big = big.to_string();
                        q.evict_newest(&big);
                    }
                    _ => {
                        self.refused(Refusal::QueueFull);
                        return Err(Refusal::QueueFull);
                    }
                }
            }
            q.push(class, weight, Waiter { id, tx });
            self.queued.store(q.len() as u32, Ordering::Release);
            self.queue_gauge.set(q.len() as i64);
        }
        // A slot may have been released between the failed take and the push.
        self.dispatch();
        let outcome = tokio::time::timeout(deadline, rx).await;
        let wait = started.elapsed().as_secs_f64();
        metrics()
            .upstream_queue_wait
            .with_label_values(&[&self.upstream])
            .observe(wait);
        match outcome {
            // The dispatcher counted this slot in `in_flight` before sending it.
            Ok(Ok(())) => Ok(Slot(Arc::clone(self))),
            // Evicted to make room for another class.
            Ok(Err(_)) => {
                self.refused(Refusal::QueueFull);
                Err(Refusal::QueueFull)
            }
            Err(_) => {
                let still_queued = {
                    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let removed = q.remove(class, id);
                    self.queued.store(q.len() as u32, Ordering::Release);
                    self.queue_gauge.set(q.len() as i64);
                    removed
                };
                if !still_queued {
                    // The slot was sent as the deadline passed: give it back.
                    self.release();
                }
                self.refused(Refusal::Deadline);
                Err(Refusal::Deadline)
            }
        }
    }

    fn refused(&self, why: Refusal) {
        metrics()
            .overload_refusals
            .with_label_values(&[&self.upstream, why.label()])
            .inc();
    }

    /// Returns a slot, handing it to the next waiter when there is one.
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.queued.load(Ordering::Acquire) != 0 {
            self.dispatch();
        }
    }

    /// Hands free slots to waiters, in fair order.
    fn dispatch(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while !q.is_empty() {
            let limit = self.limit.load(Ordering::Acquire);
            let cur = self.in_flight.load(Ordering::Acquire);
            if cur >= limit {
                break;
            }
            if self
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            match q.pop() {
                Some(w) => {
                    if w.tx.send(()).is_err() {
                        // Its request is gone (deadline or client): the slot goes to the next one.
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                None => {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
        }
        self.queued.store(q.len() as u32, Ordering::Release);
        self.queue_gauge.set(q.len() as i64);
    }

    /// One answered request's time to the upstream's response head: feeds the adaptive limit.
    pub fn sample(&self, rtt: Duration) {
        let us = rtt.as_micros().min(u128::from(u32::MAX)) as u64;
        self.window_us.fetch_add(us, Ordering::Relaxed);
        let n = self.window_count.fetch_add(1, Ordering::AcqRel) + 1;
        if n < self
            .limit
            .load(Ordering::Relaxed)
            .clamp(MIN_WINDOW, MAX_WINDOW)
        {
            return;
        }
        // Locks in one order everywhere: the settings, then the limiter.
        let spec = self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // One caller closes the window; the others go on.
        let Ok(mut g) = self.gradient.try_lock() else {
            return;
        };
        let count = self.window_count.swap(0, Ordering::AcqRel);
        let total = self.window_us.swap(0, Ordering::AcqRel);
        if count == 0 || !spec.adaptive {
            return;
        }
        let rtt = total as f64 / f64::from(count) / 1e6;
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let limit = g.update(rtt, spec.min, spec.max, Instant::now(), in_flight);
        drop(g);
        self.set_limit(limit);
    }

    /// A try that failed (connection refused or reset, timeout): the adaptive limit shrinks.
    pub fn failure(&self) {
        let spec = self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !spec.adaptive {
            return;
        }
        let limit = {
            let mut g = self.gradient.lock().unwrap_or_else(|p| p.into_inner());
            g.failed(spec.min, spec.max)
        };
        self.set_limit(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: u32, max: u32, adaptive: bool) -> ConcurrencySpec {
        ConcurrencySpec { min, max, adaptive }
    }

    /// The first probe: its two windows at `rtt`; the limit is then back where it was.
    fn first_probe(g: &mut Gradient, rtt: f64, min: u32, max: u32, now: Instant) -> u32 {
        assert_eq!(
            g.update(rtt, min, max, now, 0),
            min.min(PROBE_CONCURRENCY as u32),
            "the first window starts a probe"
        );
        g.update(rtt, min, max, now, 0);
        g.update(rtt, min, max, now, 0)
    }

    #[test]
    fn gradient_shrinks_on_latency_and_grows_back() {
        let now = Instant::now();
        let mut g = Gradient::new(100.0);
        // The baseline: 10 ms.
        let base = first_probe(&mut g, 0.010, 4, 100, now);
        assert_eq!(base, 100, "at the baseline the limit goes back open");
        assert_eq!(g.update(0.010, 4, 100, now, 0), 100);
        // Latency five times the baseline: the limit halves (plus its headroom) each window.
        let mut limit = base;
        for _ in 0..5 {
            limit = g.update(0.050, 4, 100, now, 0);
        }
        assert!(limit < 30, "slow upstream: limit {limit}");
        // Back to the baseline: it grows again, up to the bound.
        let low = limit;
        for _ in 0..50 {
            limit = g.update(0.010, 4, 100, now, 0);
        }
        assert!(limit > low, "recovered: {low} -> {limit}");
        assert_eq!(limit, 100);
        // Never below the minimum.
        for _ in 0..50 {
            limit = g.update(10.0, 4, 100, now, 0);
        }
        assert_eq!(limit, 4);
        assert_eq!(g.failed(4, 100), 4);
    }

    /// A sustained overload keeps the limit down: thousands of windows at five times the no-load
    /// latency (within one probe interval). With a baseline that drifted up 1 % a window, it followed
    /// the load up and the limit was back at `max` within a few hundred windows.
    #[test]
    fn a_sustained_overload_keeps_the_limit_down() {
        let now = Instant::now();
        let mut g = Gradient::new(1000.0);
        first_probe(&mut g, 0.003, 16, 1000, now);
        let mut limit = 0;
        for i in 0..5_000u32 {
            // Latency follows the load as a queue inside the upstream would: 8 workers.
            let rtt = 0.003 * (g.limit / 8.0).max(1.0);
            limit = g.update(rtt, 16, 1000, now + Duration::from_micros(u64::from(i)), 0);
        }
        assert!(limit <= 32, "limit {limit} under sustained overload");
    }

    /// A probe every PROBE_INTERVAL: the limit drops to `min` for two windows, the second's latency is
    /// the new no-load latency (an upstream that became slower for good is its new normal), and the
    /// limit goes back to where it was.
    #[test]
    fn a_probe_learns_a_new_normal() {
        let t0 = Instant::now();
        let mut g = Gradient::new(100.0);
        first_probe(&mut g, 0.010, 4, 100, t0);
        // The upstream is now 5× slower whatever the load: the limit sinks to the minimum.
        let mut limit = 0;
        for _ in 0..50 {
            limit = g.update(0.050, 4, 100, t0, 0);
        }
        assert_eq!(limit, 4);
        let later = t0 + PROBE_INTERVAL;
        let before = g.update(0.050, 4, 100, later, 0);
        assert_eq!(before, 4, "the probe runs at the minimum");
        assert_eq!(
            g.update(0.200, 4, 100, later, 0),
            4,
            "draining window ignored"
        );
        g.update(0.050, 4, 100, later, 0);
        for _ in 0..50 {
            limit = g.update(0.050, 4, 100, later, 0);
        }
        assert_eq!(
            limit, 100,
            "the slower normal learnt: the limit opens again"
        );
    }

    /// A probe measures only once what was admitted above its concurrency has drained (those requests
    /// waited in the upstream's queue: their latency is no baseline); a drain that never ends is given
    /// up after PROBE_DRAIN_MAX with the old baseline kept.
    #[test]
    fn a_probe_waits_for_the_drain_and_gives_up_a_stuck_one() {
        let t0 = Instant::now();
        let mut g = Gradient::new(100.0);
        assert_eq!(g.update(0.300, 4, 100, t0, 64), 4, "probe started");
        // 64 still in flight: flood latencies, ignored however many windows close.
        for _ in 0..5 {
            assert_eq!(g.update(0.300, 4, 100, t0, 64), 4);
        }
        assert_eq!(g.update(0.300, 4, 100, t0, 4), 4, "drained");
        assert_eq!(g.update(0.010, 4, 100, t0, 4), 100, "measured: back open");
        // The baseline is 10 ms, not 300: flood latency shrinks the limit.
        assert!(g.update(0.300, 4, 100, t0, 100) < 100);
        // The next probe, with slots that never come back: given up, the baseline kept.
        let later = t0 + PROBE_INTERVAL;
        assert_eq!(g.update(0.300, 4, 100, later, 50), 4, "the next probe");
        assert_eq!(g.update(0.300, 4, 100, later, 50), 4, "still draining");
        let stuck = later + PROBE_DRAIN_MAX + Duration::from_millis(1);
        let back = g.update(0.300, 4, 100, stuck, 50);
        assert!(back > 4, "given up: the limit is back ({back})");
        assert!(
            g.update(0.300, 4, 100, stuck, 50) < back,
            "the 10 ms baseline kept"
        );
    }

    #[test]
    fn the_queue_serves_classes_in_turn() {
        let mut q = FairQueue::default();
        let mut rxs = Vec::new();
        let mut push = |q: &mut FairQueue, class: &str, id: u64| {
            let (tx, rx) = oneshot::channel();
            q.push(class, 1, Waiter { id, tx });
            rxs.push(rx);
        };
        for id in 0..5 {
            push(&mut q, "noisy", id);
        }
        push(&mut q, "quiet", 100);
        push(&mut q, "other", 200);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|w| w.id)).collect();
        // One of each class in turn, then the rest of the noisy one.
        assert_eq!(order, vec![0, 100, 200, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    /// #26: a tenant's plan weighs its turn: weight 3 takes three slots in a row, weight 1 one.
    #[test]
    fn a_heavier_class_takes_its_weight_per_turn() {
        let mut q = FairQueue::default();
        let mut rxs = Vec::new();
        let mut push = |q: &mut FairQueue, class: &str, weight: u32, id: u64| {
            let (tx, rx) = oneshot::channel();
            q.push(class, weight, Waiter { id, tx });
            rxs.push(rx);
        };
        for id in 0..6 {
            push(&mut q, "pro", 3, id);
            push(&mut q, "free", 1, 100 + id);
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|w| w.id)).collect();
        assert_eq!(
            order,
            vec![0, 1, 2, 100, 3, 4, 5, 101, 102, 103, 104, 105],
            "pro gets 3 slots per free's 1 while both wait"
        );
        // A removed waiter does not cost its class its turn.
        push(&mut q, "pro", 2, 7);
        push(&mut q, "pro", 2, 8);
        push(&mut q, "free", 1, 200);
        assert!(q.remove("pro", 7));
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|w| w.id)).collect();
        assert_eq!(order, vec![8, 200]);
    }

    #[test]
    fn a_full_queue_makes_room_from_the_largest_class() {
        let mut q = FairQueue::default();
        for id in 0..4 {
            let (tx, _rx) = oneshot::channel();
            q.push("noisy", 1, Waiter { id, tx });
        }
        assert_eq!(q.largest(), Some(("noisy", 4)));
        q.evict_newest("noisy");
        assert_eq!(q.len(), 3);
        assert!(q.remove("noisy", 0));
        assert!(!q.remove("noisy", 3), "the newest was evicted");
        assert_eq!(q.len(), 2);
    }

    #[tokio::test]
    async fn slots_are_counted_queued_fairly_and_returned() {
        let a = Admission::new("t-admission", &spec(1, 1, false));
        let first = a
            .acquire("noisy", 1, Duration::from_secs(5), 16)
            .await
            .expect("slot");
        assert_eq!(a.in_flight(), 1);
        // The limit is taken: the next ones wait; the noisy class queued first.
        let noisy: Vec<_> = (0..3)
            .map(|_| {
                let a = Arc::clone(&a);
                tokio::spawn(async move { a.acquire("noisy", 1, Duration::from_secs(5), 16).await })
            })
            .collect();
        while a.queued() < 3 {
            tokio::task::yield_now().await;
        }
        let a2 = Arc::clone(&a);
        let quiet =
            tokio::spawn(async move { a2.acquire("quiet", 1, Duration::from_secs(5), 16).await });
        while a.queued() < 4 {
            tokio::task::yield_now().await;
        }
        // Releasing the slot admits the noisy class's first waiter, then the quiet one, ahead of the
        // two noisy requests queued before it.
        drop(first);
        let mut noisy = noisy.into_iter();
        let n1 = noisy
            .next()
            .expect("task")
            .await
            .expect("join")
            .expect("slot");
        drop(n1);
        let q = quiet.await.expect("join").expect("slot");
        assert_eq!(a.queued(), 2);
        drop(q);
        for t in noisy {
            drop(t.await.expect("join").expect("slot"));
        }
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_deadline_refuses_and_leaves_nothing_behind() {
        let a = Admission::new("t-deadline", &spec(1, 1, false));
        let held = a
            .acquire("x", 1, Duration::from_secs(1), 16)
            .await
            .expect("slot");
        let refused = a.acquire("y", 1, Duration::from_millis(20), 16).await;
        assert_eq!(refused.err(), Some(Refusal::Deadline));
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_flight(), 0);
        // A full queue refuses the class that fills it.
        let held = a
            .acquire("x", 1, Duration::from_secs(1), 1)
            .await
            .expect("slot");
        let a2 = Arc::clone(&a);
        let waiting =
            tokio::spawn(async move { a2.acquire("flood", 1, Duration::from_secs(5), 1).await });
        while a.queued() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            a.acquire("flood", 1, Duration::from_secs(5), 1).await.err(),
            Some(Refusal::QueueFull)
        );
        drop(held);
        drop(waiting.await.expect("join").expect("slot"));
        assert_eq!(a.in_flight(), 0);
    }
}
