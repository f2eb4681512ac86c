//! `[forwarding]`: whose `X-Forwarded-*` headers are believed, and whether header names with
//! underscores are passed on.

use ipnet::IpNet;

use super::file::ForwardingFile;
use super::Diagnostic;

/// Validates `[forwarding] trusted_proxies`.
pub(super) fn validate_trusted_proxies(
    raw: &ForwardingFile,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpNet> {
    let mut trusted_proxies = Vec::new();
    for p in &raw.trusted_proxies {
        let s = p.get_ref();
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => diags.push(Diagnostic::at(
                p,
                format!("forwarding.trusted_proxies: `{s}` is not a CIDR or IP address"),
            )),
        }
    }
    trusted_proxies
}

/// `[forwarding] underscores_in_headers` (off unless set).
pub(super) fn underscores_in_headers(raw: &ForwardingFile) -> bool {
    raw.underscores_in_headers
        .as_ref()
        .is_some_and(|v| *v.get_ref())
}
