//! DNS service discovery: upstream servers given as host names (`backend:8081`).
//!
//! Every address a name resolves to is a server. A background task resolves every name of the live
//! config again each `[dns] refresh` and swaps the upstream's members when the answer changed (see
//! [`Upstream::refresh_members`]): no reload, and the servers that stay keep their health state. A
//! name that does not exist (NXDOMAIN) or has no address records has no servers (a service scaled to
//! zero); a lookup that fails (timeout, SERVFAIL, refused) keeps the last answer, since a resolver's
//! hiccup must not empty an upstream.
//!
//! Names are looked up with the system's resolver configuration (`/etc/resolv.conf`: search domains
//! and `ndots`, as Docker's and Kubernetes' DNS set them) or the name servers of `[dns] nameservers`.
//! Nothing here runs per request: the request path reads members with one atomic load.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{Config, DnsSettings, ServerTarget};

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading the system's resolver configuration: {0}")]
    SystemConfig(String),
    #[error("building the resolver: {0}")]
    Build(String),
}

/// What one lookup said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name's addresses (sorted, A and AAAA).
    Addrs(Vec<IpAddr>),
    /// The name does not exist or has no address: no servers.
    Gone,
    /// The lookup failed; the last answer stands.
    Failed(String),
}

/// The last DNS answer of every upstream host name, shared by successive configs.
#[derive(Default)]
pub struct Discovery {
    answers: Mutex<Answers>,
}

#[derive(Default)]
struct Answers {
    addrs: HashMap<String, Vec<IpAddr>>,
    /// Names whose last answer said "no address" while they still had addresses: the next refresh
    /// must say so again before the servers go. One such answer alone is a resolver's hiccup more
    /// often than a scale to zero (seen with podman's DNS as containers come and go).
    unconfirmed_gone: HashSet<String>,
}

impl Discovery {
    /// The addresses `host` resolved to last (none before its first answer), with `port`.
    pub fn addrs(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .addrs
            .get(host)
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            .unwrap_or_default()
    }

    /// Records `answer` for `host`; returns whether the addresses changed. A name that has addresses
    /// loses them only when two answers in a row say it has none.
    pub(crate) fn record(&self, host: &str, answer: &Answer) -> bool {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let new = match answer {
            Answer::Addrs(ips) => {
                answers.unconfirmed_gone.remove(host);
                ips.clone()
            }
            Answer::Gone => {
                let has_addrs = answers.addrs.get(host).is_some_and(|a| !a.is_empty());
                if has_addrs && answers.unconfirmed_gone.insert(host.to_string()) {
                    tracing::warn!(
                        host,
                        "upstream host name has no address in this answer: its servers stay until \
                         the next refresh says so again"
                    );
                    return false;
                }
                answers.unconfirmed_gone.remove(host);
                Vec::new()
            }
            Answer::Failed(_) => return false,
        };
        answers.addrs.insert(host.to_string(), new.clone()) != Some(new)
    }

    /// Resolves, before a config goes live, the names it has that were never resolved, so that a new
    /// upstream serves from its first request. Blocks the calling thread (at most `[dns] timeout` ×
    /// attempts per name, the names in parallel); runs on its own thread and runtime, so it may be called
    /// from inside a Tokio runtime. A failure leaves the name without servers until a refresh answers.
    pub fn prime(&self, config: &Config) {
        let unknown: Vec<String> = {
            let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            hosts(config)
                .into_iter()
                .filter(|h| !answers.addrs.contains_key(h))
                .collect()
        };
        if unknown.is_empty() {
            return;
        }
        let settings = config.dns.clone();
        let lookups = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DiscoveryError::Build(e.to_string()))?;
            rt.block_on(async {
                let resolver = resolver(&settings)?;
                Ok::<_, DiscoveryError>(resolve_all(&resolver, unknown).await)
            })
        })
        .join();
        match lookups {
            Ok(Ok(answers)) => {
                for (host, answer) in answers {
                    log_answer(&host, &answer, true);
                    self.record(&host, &answer);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "upstream host names not resolved"),
            Err(_) => tracing::error!("the DNS lookup thread panicked"),
        }
    }
}

/// Every host name that an upstream of `config` lists.
pub fn hosts(config: &Config) -> Vec<String> {
    let set: HashSet<&str> = config
        .upstreams
        .iter()
        .flat_map(|u| u.servers.iter())
        .filter_map(|s| match &s.target {
            ServerTarget::Name { host, .. } => Some(host.as_str()),
            ServerTarget::Addr(_) => None,
        })
        .collect();
    let mut v: Vec<String> = set.into_iter().map(str::to_string).collect();
    v.sort_unstable();
    v
}

/// A resolver for `settings`: its name servers, or the system's configuration, asked in order. It keeps
/// no answer (every refresh asks again) and asks for both A and AAAA records.
pub fn resolver(settings: &DnsSettings) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DiscoveryError::SystemConfig(e.to_string()))?
    } else {
        let servers = settings
            .nameservers
            .iter()
            .map(|ns| {
                let mut c = NameServerConfig::udp_and_tcp(ns.ip());
                for conn in &mut c.connections {
                    conn.port = ns.port();
                }
                c
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = settings.timeout;
    opts.attempts = 2;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // The servers in their listed order, one at a time, the next only when one fails (the C library's
    // way): a container's resolv.conf may list the stack's DNS, which knows the service names, then
    // the host's, which answers NXDOMAIN for them. Asked concurrently or by latency, that NXDOMAIN
    // would empty the upstream now and then.
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.num_concurrent_reqs = 1;
    opts.positive_max_ttl = Some(std::time::Duration::ZERO);
    opts.negative_max_ttl = Some(std::time::Duration::ZERO);
    builder
        .build()
        .map_err(|e| DiscoveryError::Build(e.to_string()))
}

/// Looks `host` up once.
pub async fn resolve(resolver: &TokioResolver, host: &str) -> Answer {
    match resolver.lookup_ip(host).await {
        Ok(lookup) => {
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort_unstable();
            ips.dedup();
            if ips.is_empty() {
                Answer::Gone
            } else {
                Answer::Addrs(ips)
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::Gone,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

pub(crate) async fn resolve_all(
    resolver: &TokioResolver,
    hosts: Vec<String>,
) -> Vec<(String, Answer)> {
    let lookups = hosts.into_iter().map(|h| async move {
        let a = resolve(resolver, &h).await;
        (h, a)
    });
    futures_util::future::join_all(lookups).await
}

pub(crate) fn log_answer(host: &str, answer: &Answer, first: bool) {
    match answer {
        Answer::Addrs(ips) if first => {
            tracing::info!(host, addresses = ?ips, "upstream host name resolved")
        }
        Answer::Addrs(_) => {}
        Answer::Gone => tracing::warn!(
            host,
            "upstream host name has no address (NXDOMAIN or no A/AAAA record): no servers from it"
        ),
        Answer::Failed(e) => tracing::warn!(
            host,
            error = %e,
            "upstream host name lookup failed; its last known addresses stay in use"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_loses_its_addresses_only_when_two_answers_in_a_row_say_so() {
        let d = Discovery::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(d.record("b", &Answer::Addrs(vec![ip])));
        // One empty answer: kept.
        assert!(!d.record("b", &Answer::Gone));
        assert_eq!(d.addrs("b", 80).len(), 1);
        // An answer with addresses in between starts the count again.
        assert!(!d.record("b", &Answer::Addrs(vec![ip])));
        assert!(!d.record("b", &Answer::Gone));
        assert_eq!(d.addrs("b", 80).len(), 1);
        // A failed lookup neither confirms nor clears it; the next empty answer confirms.
        assert!(!d.record("b", &Answer::Failed("timeout".into())));
        assert!(d.record("b", &Answer::Gone));
        assert!(d.addrs("b", 80).is_empty());
        // A name never seen is recorded empty at once; an empty one stays so.
        assert!(d.record("new", &Answer::Gone));
        assert!(d.addrs("new", 80).is_empty());
        assert!(!d.record("new", &Answer::Gone));
    }
}
