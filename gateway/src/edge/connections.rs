//! Connection caps, the first thing a new connection meets: at most `[overload] max_connections` open on
//! an entrypoint and `per_client_connections` from one client address (an IPv6 /64 counts as one; a
//! trusted proxy is exempt, it speaks for many clients). A connection over a cap is closed at once,
//! before a TLS handshake or a byte of HTTP is read: refusing it costs an accept and a close, not an
//! answer. The per-client table holds only addresses with a connection open, so it is bounded by
//! `max_connections` whatever the number of distinct addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::telemetry::metrics::metrics;

/// Shards of the per-client table (a lock per shard, taken once per new connection).
const SHARDS: usize = 16;

/// One entrypoint's open connections, in total and by client.
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_client: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: AtomicUsize::new(0),
            per_client: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// An open connection, counted until it is dropped.
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    client: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.client {
            self.limits.release_client(ip);
        }
    }
}

impl ConnectionLimits {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(v4) => crate::support::hash64(&v4.octets()),
            IpAddr::V6(v6) => crate::support::hash64(&v6.octets()),
        };
        &self.per_client[(h % SHARDS as u64) as usize]
    }

    fn release_client(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Admits a new connection from `client` (None: not counted per client — a trusted proxy, or an
    /// address unknown), or refuses it when a cap is reached.
    pub fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        max_total: usize,
        max_per_client: usize,
    ) -> Option<ConnectionGuard> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            refused();
            return None;
        }
        let client = client.map(crate::support::client_budget_key);
        if let Some(ip) = client {
            let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= max_per_client {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                refused();
                return None;
            }
            *n += 1;
        }
        Some(ConnectionGuard {
            limits: Arc::clone(self),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Client addresses with a connection open now.
    pub fn clients(&self) -> usize {
        self.per_client
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

fn refused() {
    metrics()
        .overload_refusals
        .with_label_values(&["", "connections"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_entries_go_with_their_connections() {
        let l = Arc::new(ConnectionLimits::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let a1 = l.admit(Some(a), 3, 2).expect("first");
        let a2 = l.admit(Some(a), 3, 2).expect("second");
        assert!(l.admit(Some(a), 3, 2).is_none(), "per client");
        let b1 = l.admit(Some(b), 3, 2).expect("another client");
        assert!(l.admit(None, 3, 2).is_none(), "in total");
        assert_eq!((l.open(), l.clients()), (3, 2));
        drop((a1, a2, b1));
        assert_eq!((l.open(), l.clients()), (0, 0));
        // An IPv6 /64 is one client.
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::2".parse().expect("ip");
        let _g = l.admit(Some(v6a), 10, 1).expect("first of the /64");
        assert!(l.admit(Some(v6b), 10, 1).is_none());
    }

    /// A million distinct addresses, one connection each, opened and closed: the table ends empty; while
    /// open, it never holds more entries than connections.
    #[test]
    fn a_million_addresses_leave_nothing_behind() {
        let l = Arc::new(ConnectionLimits::default());
        let mut held = Vec::new();
        for i in 0u32..1_000_000 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i.wrapping_add(0x0a00_0000)));
            if let Some(g) = l.admit(Some(ip), 1000, 4) {
                held.push(g);
            }
            if held.len() == 1000 {
                assert_eq!(l.clients(), 1000);
                held.clear();
            }
        }
        drop(held);
        assert_eq!((l.open(), l.clients()), (0, 0));
    }
}
