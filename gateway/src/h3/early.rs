//! 0-RTT (`[h3] zero_rtt = true`): a client resuming a session may send requests in its first
//! flight, before the handshake has proven that it is live — so those requests can be replays of a
//! flight captured on the network. What the gateway does about it (RFC 8446 §8, RFC 8470):
//!
//! - **Single-use tickets.** Session tickets are ids into [`SingleUseTickets`], kept by the process
//!   that issued them and taken (removed) by the first handshake that presents them: rustls accepts
//!   early data only on such a stateful, taken ticket (RFC 8446 §8.1), so a replayed first flight —
//!   to this process or to another replica, which never had the ticket — has its 0-RTT data refused
//!   and reaches no upstream. Tickets are usable within `[h3] zero_rtt_window` of their issue, and
//!   rustls refuses early data when the client's claimed ticket age is off by more than a minute from
//!   the server's (the freshness check of §8.3). The store is bounded ([`TICKETS_KEPT`], oldest
//!   forgotten first): a client that floods handshakes costs others a full handshake, not memory.
//! - **Safe methods only.** A request that reaches the edge before the handshake completes goes
//!   upstream only if its method is safe (GET, HEAD, OPTIONS), marked `Early-Data: 1` (RFC 8470
//!   §5.1) so that the application can answer 425 Too Early where even a read must not be replayed.
//!   Any other request is held until the handshake completes, then served as a 1-RTT one; if it
//!   never completes (a replayed or abandoned flight), it is dropped unseen by any upstream. Holding
//!   rather than answering 425 serves clients that do not retry on 425 (most HTTP/3 stacks).
//!   Safe rather than idempotent: a replayed `DELETE` or `PUT` is idempotent only if nothing changed
//!   in between, which a replay days later does not promise.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::Notify;

/// Session tickets kept at most (each ~300 bytes: its id, the resumption secret and parameters;
/// ~10 MB when full). A process issues one per full handshake.
pub const TICKETS_KEPT: usize = 32 * 1024;

/// The session store of the QUIC entrypoint with 0-RTT on: tickets are usable once, within `window`
/// of their issue, and at most `capacity` are kept.
pub struct SingleUseTickets {
    capacity: usize,
    window: Duration,
    inner: Mutex<Tickets>,
}

#[derive(Default)]
struct Tickets {
    by_id: HashMap<Vec<u8>, (Instant, Vec<u8>)>,
    /// Issue order, for expiry and eviction; may name tickets already taken (skipped then).
    order: VecDeque<(Instant, Vec<u8>)>,
}

impl Tickets {
    /// Forgets the oldest issue-order entry; returns false when there is none.
    fn forget_oldest(&mut self) -> bool {
        let Some((issued, id)) = self.order.pop_front() else {
            return false;
        };
        if self.by_id.get(&id).is_some_and(|(at, _)| *at == issued) {
            self.by_id.remove(&id);
        }
        true
    }
}

impl std::fmt::Debug for SingleUseTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleUseTickets")
            .field("capacity", &self.capacity)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl SingleUseTickets {
    pub fn new(capacity: usize, window: Duration) -> Self {
        SingleUseTickets {
            capacity: capacity.max(1),
            window,
            inner: Mutex::new(Tickets::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put_at(&self, now: Instant, id: Vec<u8>, value: Vec<u8>) -> bool {
        let mut t = self.lock();
        while t
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            t.forget_oldest();
        }
        // Taken tickets leave their issue-order entry behind: bound that too.
        while t.by_id.len() >= self.capacity || t.order.len() >= 2 * self.capacity {
            if !t.forget_oldest() {
                break;
            }
        }
        t.order.push_back((now, id.clone()));
        t.by_id.insert(id, (now, value));
        true
    }

    pub fn take_at(&self, now: Instant, id: &[u8]) -> Option<Vec<u8>> {
        let (issued, value) = self.lock().by_id.remove(id)?;
        (now.duration_since(issued) <= self.window).then_some(value)
    }

    pub fn get_at(&self, now: Instant, id: &[u8]) -> Option<Vec<u8>> {
        let t = self.lock();
        let (issued, value) = t.by_id.get(id)?;
        (now.duration_since(*issued) <= self.window).then(|| value.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

impl rustls::server::StoresServerSessions for SingleUseTickets {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.put_at(Instant::now(), key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_at(Instant::now(), key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.take_at(Instant::now(), key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Methods that may go upstream in early data (RFC 9110 §9.2.1's safe methods but TRACE, which the
/// edge does not serve).
pub fn safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

const PENDING: u8 = 0;
const COMPLETE: u8 = 1;
const LOST: u8 = 2;

/// Where one connection's handshake stands, for its request tasks: set by the connection's task
/// (the only one that awaits quinn's completion signal), read by each request before it is
/// forwarded.
#[derive(Default)]
pub struct HandshakeState {
    state: AtomicU8,
    changed: Notify,
}

impl HandshakeState {
    /// A connection whose handshake completed before any request could arrive (0-RTT off).
    pub fn complete() -> Self {
        HandshakeState {
            state: AtomicU8::new(COMPLETE),
            changed: Notify::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state.load(Ordering::Acquire) == COMPLETE
    }

    /// The handshake completed: held requests go on.
    pub fn set_complete(&self) {
        self.settle(COMPLETE);
    }

    /// The handshake will never complete (timed out, failed, the connection gone): held requests
    /// are dropped.
    pub fn set_lost(&self) {
        self.settle(LOST);
    }

    fn settle(&self, to: u8) {
        if self
            .state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_waiters();
        }
    }

    /// Waits until the handshake completes (true) or is lost (false).
    pub async fn wait(&self) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                COMPLETE => return true,
                LOST => return false,
                _ => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ticket_resumes_once() {
        let t = SingleUseTickets::new(8, Duration::from_secs(60));
        let now = Instant::now();
        assert!(t.put_at(now, b"a".to_vec(), b"secret".to_vec()));
        assert_eq!(t.get_at(now, b"a").as_deref(), Some(&b"secret"[..]));
        assert_eq!(t.take_at(now, b"a").as_deref(), Some(&b"secret"[..]));
        assert_eq!(t.take_at(now, b"a"), None, "a replay of the same ticket");
        assert_eq!(t.take_at(now, b"unknown"), None);
    }

    #[test]
    fn tickets_expire_after_the_window() {
        let window = Duration::from_secs(60);
        let t = SingleUseTickets::new(8, window);
        let now = Instant::now();
        t.put_at(now, b"a".to_vec(), b"1".to_vec());
        t.put_at(now, b"b".to_vec(), b"2".to_vec());
        assert!(t.take_at(now + window, b"a").is_some(), "usable to the end");
        assert_eq!(t.take_at(now + window + Duration::from_secs(1), b"b"), None);
        // Expired entries are purged by later issues, not only by their use.
        t.put_at(now, b"c".to_vec(), b"3".to_vec());
        t.put_at(now + 2 * window, b"d".to_vec(), b"4".to_vec());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_million_handshakes_keep_the_store_bounded() {
        let t = SingleUseTickets::new(1024, Duration::from_secs(3600));
        let now = Instant::now();
        for i in 0..1_000_000u32 {
            t.put_at(now, i.to_be_bytes().to_vec(), vec![0; 8]);
            if i % 2 == 0 {
                // Half of them taken at once: their issue-order entries must not pile up either.
                t.take_at(now, &i.to_be_bytes());
            }
        }
        assert!(t.len() <= 1024, "{}", t.len());
        assert!(t.lock().order.len() <= 2 * 1024);
        // The newest survive, the oldest were forgotten.
        assert!(t.take_at(now, &999_999u32.to_be_bytes()).is_some());
        assert!(t.take_at(now, &1u32.to_be_bytes()).is_none());
    }

    #[test]
    fn safe_methods() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(safe_method(&m), "{m}");
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::TRACE,
            Method::CONNECT,
        ] {
            assert!(!safe_method(&m), "{m}");
        }
    }

    #[tokio::test]
    async fn held_requests_go_on_when_the_handshake_settles() {
        let state = Arc::new(HandshakeState::default());
        assert!(!state.is_complete());
        let waiter = tokio::spawn({
            let s = Arc::clone(&state);
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        state.set_complete();
        assert!(waiter.await.expect("join"));
        assert!(state.is_complete());
        state.set_lost();
        assert!(state.is_complete(), "settled once");

        let lost = Arc::new(HandshakeState::default());
        let waiter = tokio::spawn({
            let s = Arc::clone(&lost);
            async move { s.wait().await }
        });
        lost.set_lost();
        assert!(!waiter.await.expect("join"));
        assert!(HandshakeState::complete().wait().await);
    }
}
