//! Backpressure at the gateway's own core (#25 point 3): when the process itself is saturated, a class
//! (the tenant of the verified credential, else the client address) over its fair share of the requests
//! in progress is slowed down — its requests wait, and its connections' next requests are read later —
//! instead of answered with a refusal.
//!
//! - **Saturation** is the event loop's delay: every [`TICK`] a probe task yields once and measures how
//!   long the scheduler took to come back to it — the time every other runnable task took, which is
//!   what a newly readable request waits before it is looked at. Above `[overload] core_delay_target`
//!   the gate turns on with a limit on the requests in progress ([`CoreGate::observe`]: ×0.8 per tick
//!   while above, +⅛ while under half the target, off once the limit is well above what is in
//!   progress).
//! - **Fair shares.** While on, each class may have `limit × its weight ÷ the active classes' weights`
//!   requests in progress (at least one); a verified tenant weighs its plan's `concurrency_weight` (read
//!   from the process's plan cache: no I/O before the gate; 1 until cached), any other class 1. Three
//!   places hold a class to it:
//!   - before a reused HTTP/1 connection's next request is read ([`CoreGate::defer_read`]): a class at or
//!     over its share is not read at all until one of its requests ends — the flood waits in its own
//!     socket buffers and costs the core nothing. This check is cheap and approximate (connections that
//!     pass it together may overshoot);
//!   - before an HTTP/2 connection's next stream is processed ([`StreamClass`], vendor patch 0008): the
//!     class of the connection's latest counted stream is asked as a reused HTTP/1 connection's is; while
//!     it is over its share, new streams wait inside h2 (within the connection's stream limit) and the
//!     streams in progress are still served;
//!   - once a request is read and its credential verified ([`CoreGate::admit`]): the exact one. A
//!     request over its class's share waits for a ticket handed over by the next request of its class
//!     to end.
//!
//!   All waits are bounded by `[overload] queue_timeout`: a connection held back that long is read
//!   anyway, and a read request still without a ticket by then is refused (503 + `Retry-After`,
//!   `overloaded_core`) — past saturation the excess must be answered or the latency of what is served
//!   grows with the backlog, and a refusal after the wait is the only one the flood pays for.
//! - **Cost when off**: one atomic load per request; nothing is counted, nothing allocated.
//!
//! Not held back before reading: a connection's first request (its class is not known before it is
//! read); it still waits at [`CoreGate::admit`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::telemetry::metrics::metrics;

/// How often the event loop's delay is probed.
pub const TICK: Duration = Duration::from_millis(5);
/// A probe with no request for this long, the gate off, stops until the next request.
pub const PROBE_IDLE: Duration = Duration::from_secs(1);
/// A quiet event loop (the gate off, a delay under a quarter of the target) is probed less and less
/// often, down to this: at a few requests a second the probe's own wake-ups were most of the CPU
/// (~500 µs per login at 58 logins/s). The first delayed probe brings it back to every [`TICK`].
pub const PROBE_QUIET_MAX: Duration = Duration::from_millis(100);
/// The limit never goes below this (enough requests in progress to keep the core busy).
pub const MIN_LIMIT: usize = 4;
const SHARDS: usize = 16;

/// Classes are already 64-bit hashes (of a tenant, or a client address); the maps mix them once more
/// (a multiply) instead of hashing them again with SipHash on every request.
#[derive(Default)]
struct ClassHasher(u64);

impl Hasher for ClassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

type ClassMap = HashMap<u64, Class, BuildHasherDefault<ClassHasher>>;

/// The class a reused connection carries to its next request (see `persist_connection_context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreClass(pub u64);

/// An HTTP/2 connection's standing at the gate: the class of its latest stream counted while the gate
/// was on, asked when the connection's next stream arrives, before it is processed.
pub struct StreamClass {
    gate: Arc<CoreGate>,
    class: AtomicU64,
    /// Whether `class` holds a class yet (none before the connection's first counted stream).
    known: AtomicBool,
    /// The longest a stream is held back (`[overload] queue_timeout` when the connection came).
    max: Duration,
}

impl StreamClass {
    pub fn new(gate: Arc<CoreGate>, max: Duration) -> StreamClass {
        StreamClass {
            gate,
            class: AtomicU64::new(0),
            known: AtomicBool::new(false),
            max,
        }
    }

    /// A stream of the connection was counted in `class`.
    pub fn set(&self, class: CoreClass) {
        self.class.store(class.0, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
    }
}

impl pingora::protocols::http::v2::server::StreamGate for StreamClass {
    fn defer_next_stream(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        if !self.known.load(Ordering::Acquire) {
            return None;
        }
        self.gate
            .defer_read(CoreClass(self.class.load(Ordering::Relaxed)), self.max)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Records on a stream's HTTP/2 connection (if it is one and keeps a [`StreamClass`]) the class its
/// stream was counted in.
pub fn mark_h2_connection(session: &pingora::proxy::Session, class: CoreClass) {
    if let Some(c) = session
        .as_downstream()
        .as_http2()
        .and_then(|h2| h2.connection_gate())
        .and_then(|g| g.as_any().downcast_ref::<StreamClass>())
    {
        c.set(class);
    }
}

/// The process-wide gate (one per gateway process, kept across reloads).
pub struct CoreGate {
    /// Requests in progress allowed while on; 0 when off.
    limit: AtomicUsize,
    /// The event-loop delay the gate holds the process to, in µs.
    target_us: AtomicU64,
    shards: [Mutex<ClassMap>; SHARDS],
    /// Classes with requests in progress or waiting, and the sum of their weights.
    classes: AtomicUsize,
    weights: AtomicUsize,
    /// Requests in progress counted while on.
    active: AtomicUsize,
    enabled: AtomicBool,
    /// Held at a fixed limit (tests: `GATEWAY_FAULT_CORE_LIMIT`); the controller stays out.
    pinned: AtomicBool,
}

#[derive(Default)]
struct Class {
    /// Its weight (a verified tenant's plan's `concurrency_weight`, else 1).
    weight: usize,
    active: usize,
    /// Requests read and waiting for a ticket.
    admits: VecDeque<oneshot::Sender<CoreTicket>>,
    /// Connections waiting before their next read.
    readers: VecDeque<oneshot::Sender<()>>,
}

impl Class {
    fn idle(&self) -> bool {
        self.active == 0 && self.admits.is_empty() && self.readers.is_empty()
    }
}

/// A request whose class stayed over its share until its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreRefused;

/// A request in progress, counted in its class until dropped (with the request's context).
pub struct CoreTicket {
    /// None: handed over but not taken (its count was given back by hand).
    gate: Option<Arc<CoreGate>>,
    class: u64,
}

impl CoreTicket {
    pub fn class(&self) -> CoreClass {
        CoreClass(self.class)
    }
}

impl Drop for CoreTicket {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.leave(self.class);
        }
    }
}

impl CoreGate {
    pub fn new(target: Duration, enabled: bool) -> Arc<CoreGate> {
        Arc::new(CoreGate {
            limit: AtomicUsize::new(0),
            target_us: AtomicU64::new(target.as_micros() as u64),
            shards: std::array::from_fn(|_| Mutex::new(ClassMap::default())),
            classes: AtomicUsize::new(0),
            weights: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            enabled: AtomicBool::new(enabled),
            pinned: AtomicBool::new(false),
        })
    }

    /// Holds the gate on at `limit` whatever the event loop's delay (fault injection for tests).
    pub fn pin(&self, limit: usize) {
        self.pinned.store(true, Ordering::Relaxed);
        let limit = limit.max(1);
        self.limit.store(limit, Ordering::Relaxed);
        metrics().core_concurrency_limit.set(limit as i64);
    }

    /// A reload's settings.
    pub fn configure(self: &Arc<Self>, target: Duration, enabled: bool) {
        self.target_us
            .store(target.as_micros() as u64, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Relaxed);
        if !enabled && !self.pinned.load(Ordering::Relaxed) {
            self.switch_off();
        }
    }

    /// The current limit (0: off).
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    fn shard(&self, class: u64) -> MutexGuard<'_, ClassMap> {
        // A poisoned shard only means a panic elsewhere mid-update of plain counters: keep using it.
        self.shards[((class >> 32) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether more than one class has requests in progress: a single class has nobody to be fair to,
    /// and is not held back (its excess waits for its upstream's slots, with their deadline).
    pub fn contended(&self) -> bool {
        self.classes.load(Ordering::Relaxed) > 1
    }

    /// The share of the limit of a class of `weight`: the limit in proportion to the weights of the
    /// classes with requests in progress or waiting (at least one).
    fn share_of(&self, weight: usize) -> usize {
        let limit = self.limit();
        (limit * weight / self.weights.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// The entry of `class`, created (and counted among the classes) if need be, with its weight now.
    fn entry<'a>(&self, shard: &'a mut ClassMap, class: u64, weight: usize) -> &'a mut Class {
        let weight = weight.max(1);
        let c = shard.entry(class).or_insert_with(|| {
            self.classes.fetch_add(1, Ordering::Relaxed);
            self.weights.fetch_add(weight, Ordering::Relaxed);
            Class {
                weight,
                ..Class::default()
            }
        });
        if c.weight != weight {
            // Its plan changed: the sum follows.
            self.weights.fetch_add(weight, Ordering::Relaxed);
            self.weights.fetch_sub(c.weight, Ordering::Relaxed);
            c.weight = weight;
        }
        c
    }

    /// A class's entry leaves the counts (the caller removes it from its shard).
    fn forget(&self, c: &Class) {
        self.classes.fetch_sub(1, Ordering::Relaxed);
        self.weights.fetch_sub(c.weight, Ordering::Relaxed);
    }

    /// A ticket of `class`, counted now (the caller holds its shard).
    fn ticket(self: &Arc<Self>, c: &mut Class, class: u64) -> CoreTicket {
        c.active += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        CoreTicket {
            gate: Some(Arc::clone(self)),
            class,
        }
    }

    /// Admits a read request of `class` (of `weight`): at once while the gate is off (None: not
    /// counted) or its class is under its share; otherwise once a request of its class ends. Err after
    /// `deadline`.
    pub async fn admit(
        self: &Arc<Self>,
        class: u64,
        weight: usize,
        deadline: Duration,
    ) -> Result<Option<CoreTicket>, CoreRefused> {
        if self.limit() == 0 {
            return Ok(None);
        }
        let rx = {
            let mut shard = self.shard(class);
            let c = self.entry(&mut shard, class, weight);
            let share = self.share_of(c.weight);
            if c.active < share || !self.contended() {
                return Ok(Some(self.ticket(c, class)));
            }
            let (tx, rx) = oneshot::channel();
            c.admits.push_back(tx);
            rx
        };
        metrics().core_deferrals.inc();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(t)) => Ok(Some(t)),
            // The deadline (its sender is dropped when next popped; the entry goes with it).
            _ => {
                metrics()
                    .overload_refusals
                    .with_label_values(&["", "core"])
                    .inc();
                Err(CoreRefused)
            }
        }
    }

    /// Before the next request of a reused connection of `class` is read: a future that ends when a
    /// request of its class ends (or after `max`) while the class is at or over its share; None to read
    /// now.
    pub fn defer_read(
        &self,
        class: CoreClass,
        max: Duration,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        if self.limit() == 0 {
            return None;
        }
        let rx = {
            let mut shard = self.shard(class.0);
            // A class with nothing in progress is under any share (and has no entry).
            let c = shard.get_mut(&class.0)?;
            if c.active < self.share_of(c.weight) || !self.contended() {
                return None;
            }
            let (tx, rx) = oneshot::channel();
            c.readers.push_back(tx);
            rx
        };
        metrics().core_deferrals.inc();
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(max, rx).await;
        }))
    }

    /// A request of `class` ended: hands its place on within the share.
    fn leave(self: &Arc<Self>, class: u64) {
        let mut shard = self.shard(class);
        let Some(c) = shard.get_mut(&class) else {
            return;
        };
        c.active = c.active.saturating_sub(1);
        self.active.fetch_sub(1, Ordering::Relaxed);
        let share = self.share_of(c.weight);
        self.wake(c, class, share);
        if c.idle() {
            self.forget(c);
            shard.remove(&class);
        }
    }

    /// Up to `share`: tickets to read requests waiting, then the next reads of waiting connections.
    fn wake(self: &Arc<Self>, c: &mut Class, class: u64, share: usize) {
        while c.active < share {
            let Some(tx) = c.admits.pop_front() else {
                break;
            };
            let t = self.ticket(c, class);
            if let Err(mut t) = tx.send(t) {
                // Its request is gone (aborted, or past its deadline): take the count back by hand (the
                // shard is held, so the ticket must not drop into `leave`).
                t.gate = None;
                c.active -= 1;
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let mut room = share.saturating_sub(c.active);
        while room > 0 {
            let Some(tx) = c.readers.pop_front() else {
                break;
            };
            if tx.send(()).is_ok() {
                room -= 1;
            }
        }
    }

    /// `[overload] core_delay_target`.
    fn target(&self) -> Duration {
        Duration::from_micros(self.target_us.load(Ordering::Relaxed))
    }

    /// One probe of the event loop's delay: the controller's step.
    pub fn observe(self: &Arc<Self>, delay: Duration) {
        if !self.enabled.load(Ordering::Relaxed) || self.pinned.load(Ordering::Relaxed) {
            return;
        }
        let target = Duration::from_micros(self.target_us.load(Ordering::Relaxed));
        let limit = self.limit();
        let next = if delay > target {
            if limit == 0 {
                // On: start from what is in progress now, and come down from there.
                let in_progress = usize::try_from(metrics().connections_active.get()).unwrap_or(0);
                (in_progress * 4 / 5).max(MIN_LIMIT)
            } else {
                (limit * 4 / 5).max(MIN_LIMIT)
            }
        } else if limit > 0 && delay < target / 2 {
            let grown = limit + (limit / 8).max(1);
            let counted = self.active.load(Ordering::Relaxed);
            if grown > 2 * counted.max(MIN_LIMIT) {
                0
            } else {
                grown
            }
        } else {
            limit
        };
        if next == limit {
            return;
        }
        if next == 0 {
            self.switch_off();
            return;
        }
        self.limit.store(next, Ordering::Relaxed);
        metrics().core_concurrency_limit.set(next as i64);
        if next > limit {
            self.wake_all(false);
        }
    }

    /// Off: nothing is held back any more; what waits goes on.
    fn switch_off(self: &Arc<Self>) {
        self.limit.store(0, Ordering::Relaxed);
        metrics().core_concurrency_limit.set(0);
        self.wake_all(true);
    }

    /// Wakes every class up to its share (`unlimited`: everything waiting).
    fn wake_all(self: &Arc<Self>, unlimited: bool) {
        for s in &self.shards {
            let mut shard = s.lock().unwrap_or_else(|p| p.into_inner());
            for (class, c) in shard.iter_mut() {
                let share = if unlimited {
                    usize::MAX
                } else {
                    self.share_of(c.weight)
                };
                self.wake(c, *class, share);
            }
            shard.retain(|_, c| {
                if c.idle() {
                    self.forget(c);
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Starts the probe on the runtime of the calling thread if it is not running there (each of
    /// Pingora's per-thread runtimes has its own loop to measure); called for every request. A probe
    /// stops after [`PROBE_IDLE`] without a request while the gate is off, so an idle gateway is not
    /// woken every [`TICK`]; the next request starts it again.
    pub fn ensure_probe(self: &Arc<Self>) {
        thread_local! {
            static PROBE: Arc<ProbeState> = Arc::new(ProbeState::default());
        }
        if !self.enabled.load(Ordering::Relaxed) {
            // `[overload] core_backpressure = false`: nothing reads the probe.
            return;
        }
        PROBE.with(|probe| {
            probe.requests.store(true, Ordering::Relaxed);
            if probe.running.load(Ordering::Acquire) || probe.running.swap(true, Ordering::AcqRel) {
                return;
            }
            let gate = Arc::downgrade(self);
            let probe = Arc::clone(probe);
            tokio::spawn(async move {
                let mut quiet = Duration::ZERO;
                let mut every = TICK;
                loop {
                    tokio::time::sleep(every).await;
                    let t = Instant::now();
                    tokio::task::yield_now().await;
                    let delay = t.elapsed();
                    let Some(g) = gate.upgrade() else {
                        probe.running.store(false, Ordering::Release);
                        return;
                    };
                    g.observe(delay);
                    if probe.requests.swap(false, Ordering::Relaxed) {
                        quiet = Duration::ZERO;
                    } else {
                        quiet += every;
                    }
                    let calm = g.limit() == 0 && delay < g.target() / 4;
                    every = if calm {
                        (every * 2).min(PROBE_QUIET_MAX)
                    } else {
                        TICK
                    };
                    if !g.enabled.load(Ordering::Relaxed) || (quiet >= PROBE_IDLE && g.limit() == 0)
                    {
                        probe.running.store(false, Ordering::Release);
                        return;
                    }
                }
            });
        });
    }
}

/// A thread's probe: whether it runs, and whether a request came since its last tick.
#[derive(Default)]
struct ProbeState {
    running: AtomicBool,
    requests: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_on(limit: usize) -> Arc<CoreGate> {
        let g = CoreGate::new(Duration::from_millis(1), true);
        g.pin(limit);
        g
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    const WAIT: Duration = Duration::from_millis(100);

    fn admit(rt: &tokio::runtime::Runtime, g: &Arc<CoreGate>, class: u64) -> Option<CoreTicket> {
        rt.block_on(g.admit(class, 1, WAIT)).expect("admitted")
    }

    fn counts(g: &CoreGate) -> (usize, usize) {
        (
            g.classes.load(Ordering::Relaxed),
            g.active.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn off_counts_nothing_and_holds_nothing_back() {
        let g = CoreGate::new(Duration::from_millis(1), true);
        assert!(admit(&rt(), &g, 1).is_none());
        assert!(g.defer_read(CoreClass(1), WAIT).is_none());
        assert_eq!(counts(&g), (0, 0));
    }

    #[test]
    fn a_class_over_its_share_waits_for_its_own_and_the_other_does_not() {
        let g = gate_on(4);
        let rt = rt();
        // Two classes: a share of 2 each. The noisy class has 2 in progress, the quiet one 1.
        let n1 = admit(&rt, &g, 7).expect("on");
        let _n2 = admit(&rt, &g, 7).expect("on");
        let q = admit(&rt, &g, 9).expect("on");
        assert_eq!(g.share_of(1), 2);
        assert!(
            g.defer_read(CoreClass(9), WAIT).is_none(),
            "quiet: read at once"
        );
        let read = g.defer_read(CoreClass(7), WAIT).expect("noisy: read later");
        let g2 = Arc::clone(&g);
        let third = rt.spawn(async move { g2.admit(7, 1, Duration::from_secs(60)).await });
        rt.block_on(tokio::task::yield_now());
        // The quiet class's end hands nothing to the noisy one.
        drop(q);
        assert!(!third.is_finished());
        // A noisy request ends: its waiting request gets the ticket first (the read still waits).
        drop(n1);
        let t = rt
            .block_on(third)
            .expect("join")
            .expect("admitted")
            .expect("ticket");
        assert_eq!(t.class(), CoreClass(7));
        assert_eq!(counts(&g).1, 2, "the handed-over ticket is counted");
        drop(t);
        // Now the connection waiting to read is woken, before its deadline.
        let t0 = tokio::time::Instant::now();
        rt.block_on(read);
        assert!(rt.block_on(async { t0.elapsed() }) < WAIT);
    }

    /// A class's share follows its plan's weight: with a limit of 8 and weights 3 and 1, the heavy
    /// class may have 6 in progress and the light one 2; the weights leave with their classes.
    #[test]
    fn shares_follow_the_weights_and_leave_with_their_classes() {
        let g = gate_on(8);
        let rt = rt();
        let mut heavy = Vec::new();
        for _ in 0..6 {
            heavy.push(
                rt.block_on(g.admit(1, 3, WAIT))
                    .expect("admitted")
                    .expect("on"),
            );
        }
        let light: Vec<_> = (0..2).map(|_| admit(&rt, &g, 2).expect("on")).collect();
        assert_eq!(g.weights.load(Ordering::Relaxed), 4);
        assert_eq!((g.share_of(3), g.share_of(1)), (6, 2));
        assert!(g.defer_read(CoreClass(1), WAIT).is_some(), "heavy at its 6");
        assert!(g.defer_read(CoreClass(2), WAIT).is_some(), "light at its 2");
        drop(heavy.pop());
        assert!(g.defer_read(CoreClass(1), WAIT).is_none(), "heavy under 6");
        // A plan change re-weighs the class on its next request.
        heavy.truncate(1);
        heavy.push(
            rt.block_on(g.admit(1, 1, WAIT))
                .expect("admitted")
                .expect("on"),
        );
        assert_eq!(g.weights.load(Ordering::Relaxed), 2);
        drop(heavy);
        drop(light);
        assert_eq!(counts(&g), (0, 0));
        assert_eq!(g.weights.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_read_goes_on_and_a_request_is_refused_at_the_deadline() {
        let g = gate_on(MIN_LIMIT);
        let rt = rt();
        // Two classes: a share of 2 each.
        let other = admit(&rt, &g, 999).expect("on");
        let held: Vec<_> = (0..2).map(|_| admit(&rt, &g, 3).expect("on")).collect();
        // Paused time: the deadlines pass without real waiting.
        rt.block_on(g.defer_read(CoreClass(3), WAIT).expect("at its share"));
        assert_eq!(rt.block_on(g.admit(3, 1, WAIT)).err(), Some(CoreRefused));
        assert_eq!(counts(&g), (2, 3), "the refused request is not counted");
        drop(held);
        drop(other);
        assert_eq!(counts(&g), (0, 0), "nothing left behind");
    }

    #[test]
    fn a_waiter_that_went_away_gives_its_ticket_back() {
        let g = gate_on(1);
        let rt = rt();
        let other = admit(&rt, &g, 999).expect("on");
        let held = admit(&rt, &g, 5).expect("on");
        let g2 = Arc::clone(&g);
        let waiting = rt.spawn(async move { g2.admit(5, 1, WAIT).await });
        rt.block_on(tokio::task::yield_now());
        waiting.abort();
        let _ = rt.block_on(waiting);
        drop(held);
        drop(other);
        assert_eq!(counts(&g), (0, 0));
    }

    #[test]
    fn switching_off_lets_every_waiter_go() {
        let g = gate_on(MIN_LIMIT);
        let rt = rt();
        let other = admit(&rt, &g, 999).expect("on");
        let held: Vec<_> = (0..2).map(|_| admit(&rt, &g, 5).expect("on")).collect();
        let read = g.defer_read(CoreClass(5), WAIT).expect("at its share");
        let g2 = Arc::clone(&g);
        let waiting = rt.spawn(async move { g2.admit(5, 1, Duration::from_secs(60)).await });
        rt.block_on(tokio::task::yield_now());
        g.switch_off();
        let t0 = tokio::time::Instant::now();
        rt.block_on(read);
        let t = rt.block_on(waiting).expect("join").expect("admitted");
        assert!(t.is_some());
        assert!(rt.block_on(async { t0.elapsed() }) < WAIT);
        assert!(admit(&rt, &g, 5).is_none(), "off: not counted");
        drop(t);
        drop(held);
        drop(other);
        assert_eq!(counts(&g), (0, 0));
    }

    #[test]
    fn the_controller_turns_on_backs_off_grows_and_turns_off() {
        let g = CoreGate::new(Duration::from_millis(1), true);
        g.observe(Duration::from_micros(100));
        assert_eq!(g.limit(), 0, "under the target: stays off");
        g.observe(Duration::from_millis(5));
        assert!(g.limit() >= MIN_LIMIT, "over the target: on");
        for _ in 0..100 {
            g.observe(Duration::from_millis(5));
        }
        assert_eq!(g.limit(), MIN_LIMIT, "backs off to the floor");
        // Demand at the limit: it grows while the loop is fast.
        let rt = rt();
        let held: Vec<_> = (0..MIN_LIMIT)
            .map(|i| admit(&rt, &g, i as u64).expect("on"))
            .collect();
        g.observe(Duration::from_micros(10));
        assert_eq!(g.limit(), MIN_LIMIT + 1);
        drop(held);
        // Nothing in progress and a fast loop: off.
        for _ in 0..100 {
            g.observe(Duration::from_micros(10));
        }
        assert_eq!(g.limit(), 0);
    }

    /// A single class has nobody to be fair to: it is neither held back before reading nor kept
    /// waiting, however far over the limit.
    #[test]
    fn a_single_class_is_not_held_back() {
        let g = gate_on(1);
        let rt = rt();
        let held: Vec<_> = (0..10).map(|_| admit(&rt, &g, 4).expect("on")).collect();
        assert!(g.defer_read(CoreClass(4), WAIT).is_none());
        assert!(!g.contended());
        drop(held);
        assert_eq!(counts(&g), (0, 0));
    }

    #[test]
    fn disabled_never_turns_on() {
        let g = CoreGate::new(Duration::from_millis(1), false);
        g.observe(Duration::from_secs(1));
        assert_eq!(g.limit(), 0);
    }

    /// A million distinct classes pass through: only those in progress or waiting are kept.
    #[test]
    fn many_distinct_classes_leave_nothing_behind() {
        let g = gate_on(1_000);
        let rt = rt();
        for class in 0..1_000_000u64 {
            // Weights as a plan may give them (1 to 1000).
            let weight = (class % 1000) as usize + 1;
            drop(rt.block_on(g.admit(class, weight, WAIT)).expect("admitted"));
        }
        assert_eq!(counts(&g), (0, 0));
        assert_eq!(
            g.weights.load(Ordering::Relaxed),
            0,
            "no weight left behind"
        );
        let kept: usize = g.shards.iter().map(|s| s.lock().expect("lock").len()).sum();
        assert_eq!(kept, 0);
    }
}
