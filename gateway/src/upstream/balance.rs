//! The server orders behind `balance`: a consistent-hash ring (`ip_hash`, `header`, `cookie`) and
//! nginx's smooth weighted round robin, computed once per member set.

use crate::support::hash64;

use super::RING_POINTS;

pub(super) fn hash_ring(servers: &[(&str, u32)]) -> Vec<(u64, u16)> {
    let mut ring = Vec::new();
    for (i, (label, weight)) in servers.iter().enumerate() {
        for v in 0..RING_POINTS * weight {
            ring.push((hash64(format!("{label}#{v}").as_bytes()), i as u16));
        }
    }
    ring.sort_unstable();
    ring
}

/// nginx's smooth weighted round robin, unrolled into one full cycle (length = sum of weights).
pub(super) fn smooth_wrr(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("at least one server");
        current[best] -= total;
        out.push(best as u16);
    }
    out
}
