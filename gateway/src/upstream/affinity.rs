//! Which runtime thread made each upstream connection, and whether the request that reuses it runs on
//! that thread: `gateway_upstream_connections_total{kind="new"|"reused_same_thread"|"reused_other_thread"}`.
//!
//! A connection's I/O stays registered with the reactor of the runtime that opened it; a request on
//! another runtime that reuses it is woken through that other thread (a cross-thread wake-up per
//! readiness event). With one service whose runtimes share Pingora's connection pool that happens at
//! random; with `[server] reuseport` (one service, so one pool, per thread) it cannot.
//!
//! Cost per request: a thread-local read, one relaxed atomic load or store and one counter increment.

use std::cell::Cell;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use prometheus::IntCounter;

use crate::telemetry::metrics::metrics;

/// Owner thread of each upstream socket, indexed by its fd (modulo the table's size: a process with
/// more than 65 536 descriptors may misattribute a few, which only blurs the figure).
static OWNER: [AtomicU8; 1 << 16] = [const { AtomicU8::new(0) }; 1 << 16];
/// The next thread tag to hand out (0 means "not tagged yet").
static NEXT_TAG: AtomicU8 = AtomicU8::new(1);

thread_local! {
    static TAG: Cell<u8> = const { Cell::new(0) };
}

/// This thread's tag, 1..=255 (threads beyond 255 share 255).
fn thread_tag() -> u8 {
    TAG.with(|tag| match tag.get() {
        0 => {
            let next = NEXT_TAG
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                })
                .unwrap_or(u8::MAX);
            tag.set(next);
            next
        }
        t => t,
    })
}

struct Series {
    new: IntCounter,
    same: IntCounter,
    other: IntCounter,
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let c = &metrics().upstream_connections;
        Series {
            new: c.with_label_values(&["new"]),
            same: c.with_label_values(&["reused_same_thread"]),
            other: c.with_label_values(&["reused_other_thread"]),
        }
    })
}

/// Slot of `fd` in the owner table.
fn slot(fd: RawFd) -> &'static AtomicU8 {
    &OWNER[(fd as u32 as usize) & (OWNER.len() - 1)]
}

/// Counts one upstream connection handed to a request on this thread: a new one (this thread owns it
/// from now on) or a reused one (made by this thread, or by another).
pub fn record(fd: RawFd, reused: bool) {
    let me = thread_tag();
    let series = series();
    if !reused {
        slot(fd).store(me, Ordering::Relaxed);
        series.new.inc();
    } else if slot(fd).load(Ordering::Relaxed) == me {
        series.same.inc();
    } else {
        series.other.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> (u64, u64, u64) {
        let s = series();
        (s.new.get(), s.same.get(), s.other.get())
    }

    #[test]
    fn a_connection_reused_on_another_thread_is_counted_as_such() {
        // fds far from what this test process opens; the counters are global, so compare deltas.
        let before = counts();
        record(60_001, false);
        record(60_001, true);
        std::thread::spawn(|| record(60_001, true))
            .join()
            .expect("thread");
        // The other thread now opens one of its own, which this thread then reuses.
        std::thread::spawn(|| record(60_002, false))
            .join()
            .expect("thread");
        record(60_002, true);
        let after = counts();
        assert_eq!(after.0 - before.0, 2, "new");
        assert_eq!(after.1 - before.1, 1, "reused on the owner's thread");
        assert_eq!(after.2 - before.2, 2, "reused on another thread");
    }

    #[test]
    fn threads_get_distinct_tags() {
        let here = thread_tag();
        let there = std::thread::spawn(thread_tag).join().expect("thread");
        assert_ne!(here, there);
        assert_eq!(here, thread_tag(), "a thread keeps its tag");
    }
}
