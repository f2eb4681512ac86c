//! Small helpers shared by the request path and the systems beside it.

pub mod cert;
pub mod file_watch;
pub mod fs;
pub mod http_client;
pub mod jwks;
pub mod proxy_protocol;
pub mod redis;
pub mod single_flight;

use std::net::{IpAddr, Ipv6Addr};

/// FNV-1a then a murmur finaliser: fast, stable across processes and releases (unlike `DefaultHasher`).
/// For shard picks and consistent hashing, never for keys a client could collide on purpose in a map.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Wall-clock Unix time in seconds, with its fraction (0 before 1970).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The key of a per-client budget for `ip`: the address itself for IPv4, its /64 for IPv6. One IPv6
/// host commonly holds a whole /64 (SLAAC, privacy addresses), so a budget per address would give a
/// single client 2^64 budgets.
pub fn client_budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_budget_key(a), client_budget_key(b));
        assert_ne!(client_budget_key(a), client_budget_key(c));
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(client_budget_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_budget_key(mapped), v4);
    }
}
