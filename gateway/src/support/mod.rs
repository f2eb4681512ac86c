//! Small helpers shared by the request path and the systems beside it.

use std::net::{IpAddr, Ipv6Addr};

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
