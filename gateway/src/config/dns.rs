//! `[dns]`: how upstream servers given as host names are resolved and re-resolved.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::DiscoveryDnsFile;
use super::{duration_or, Diagnostic};

/// How often upstream host names are resolved again unless `[dns] refresh` says otherwise.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// How long one DNS query may take unless `[dns] timeout` says otherwise.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Validated `[dns]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Name servers to ask (UDP, then TCP on truncation); empty: the system's (`/etc/resolv.conf`,
    /// with its search domains, as Docker and Kubernetes set them).
    pub nameservers: Vec<SocketAddr>,
    pub refresh: Duration,
    pub timeout: Duration,
}

/// Validates `[dns]` (defaults when absent).
pub(super) fn validate_dns(
    dns: Option<&DiscoveryDnsFile>,
    diags: &mut Vec<Diagnostic>,
) -> DnsSettings {
    DnsSettings {
        nameservers: dns
            .and_then(|d| d.nameservers.as_ref())
            .map(|list| {
                list.get_ref()
                    .iter()
                    .filter_map(|n| {
                        let text = n.get_ref();
                        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                            text.parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, 53))
                        });
                        if parsed.is_none() {
                            diags.push(Diagnostic::at(
                                n,
                                format!(
                                    "dns.nameservers: `{text}` is not an IP or IP:port address"
                                ),
                            ));
                        }
                        parsed
                    })
                    .collect()
            })
            .unwrap_or_default(),
        refresh: duration_or(
            &dns.and_then(|d| d.refresh.clone()),
            DEFAULT_DNS_REFRESH,
            diags,
        ),
        timeout: duration_or(
            &dns.and_then(|d| d.timeout.clone()),
            DEFAULT_DNS_TIMEOUT,
            diags,
        ),
    }
}
