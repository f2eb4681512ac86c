//! `[[upstreams]]`, validated: servers (IP addresses, or host names that the gateway resolves and
//! re-resolves at run time, see `upstream::discovery`), balancing, health checks, timeouts, retries.

use super::file::{ConcurrencyFile, ServerEntry, TimeoutsFile, UpstreamFile};
use super::UpstreamTls;
use super::{duration_or, positive, Diagnostic};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Upstream read timeout (time to wait for each read of the response).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream write timeout.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle upstream keep-alive connection is kept in the pool.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries per request across servers of an upstream (1 = no retry).
pub const DEFAULT_MAX_TRIES: u32 = 3;
/// Health check defaults.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastConn,
    HashTenant,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::LeastConn => "least_conn",
            Balance::HashTenant => "hash_tenant",
        }
    }
}

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
}

impl UpstreamProtocol {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Https => "https",
            UpstreamProtocol::H2 => "h2",
        }
    }

    /// Whether the upstream is spoken to over TLS.
    pub fn tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2)
    }

    /// Whether the upstream is spoken to in HTTP/2.
    pub fn h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }
}

/// Where a server entry points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerTarget {
    /// One address, as written.
    Addr(SocketAddr),
    /// A host name: every address it resolves to is a server, re-resolved every `[dns] refresh`.
    Name { host: String, port: u16 },
}

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub target: ServerTarget,
    /// As written in the file (`host:port`), used in metrics and `/api/routes`.
    pub label: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The upstream's TLS: checks go over the same TLS as requests.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Checks speak HTTP/2 (`protocol = "h2"`): a server that speaks nothing else must pass too.
    pub h2: bool,
    /// gRPC health checking (`grpc = true`): the service asked about (`""`: the whole server). The
    /// check passes when `grpc.health.v1.Health/Check` answers SERVING with grpc-status 0.
    pub grpc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    /// TLS towards the servers (`protocol = "https"` or `"h2"`).
    pub tls: Option<Arc<UpstreamTls>>,
    /// `proxy_protocol = "v2"`: each connection to a server starts with a PROXY protocol v2 header
    /// naming the client's connection, and serves that client connection only.
    pub send_proxy: bool,
    pub health: Option<HealthSpec>,
    pub timeouts: Timeouts,
    pub max_tries: u32,
    pub concurrency: ConcurrencySpec,
}

/// Concurrency limit bounds by default: adaptive between these.
pub const DEFAULT_CONCURRENCY_MIN: u32 = 16;
pub const DEFAULT_CONCURRENCY_MAX: u32 = 1000;
/// The largest concurrency limit accepted.
const MAX_CONCURRENCY: i64 = 1_000_000;

/// `concurrency = { min, max, adaptive }` of an upstream, validated: how many requests it may have in
/// flight (see `upstream::admission`). Adaptive, the limit follows the upstream's latency within
/// `[min, max]`; fixed, it is `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencySpec {
    pub min: u32,
    pub max: u32,
    pub adaptive: bool,
}

impl Default for ConcurrencySpec {
    fn default() -> Self {
        ConcurrencySpec {
            min: DEFAULT_CONCURRENCY_MIN,
            max: DEFAULT_CONCURRENCY_MAX,
            adaptive: true,
        }
    }
}

fn validate_concurrency(
    c: Option<&toml::Spanned<ConcurrencyFile>>,
    diags: &mut Vec<Diagnostic>,
) -> ConcurrencySpec {
    let Some(c) = c else {
        return ConcurrencySpec::default();
    };
    let bound =
        |v: &Option<toml::Spanned<i64>>, default: u32, key: &str, diags: &mut Vec<Diagnostic>| {
            match v {
                None => default,
                Some(n) if (1..=MAX_CONCURRENCY).contains(n.get_ref()) => *n.get_ref() as u32,
                Some(n) => {
                    diags.push(Diagnostic::at(
                        n,
                        format!("concurrency.{key} must be between 1 and {MAX_CONCURRENCY}"),
                    ));
                    default
                }
            }
        };
    let inner = c.get_ref();
    let adaptive = inner.adaptive.unwrap_or(true);
    // A fixed limit is `max`; with `min` alone (adaptive) `max` keeps its default, and with `max`
    // alone `min` shrinks to it when needed.
    let max = bound(&inner.max, DEFAULT_CONCURRENCY_MAX, "max", diags);
    let min = bound(&inner.min, DEFAULT_CONCURRENCY_MIN.min(max), "min", diags);
    if min > max {
        diags.push(Diagnostic::at(
            c,
            format!("concurrency: min ({min}) is above max ({max})"),
        ));
    }
    if !adaptive && inner.min.is_some() {
        diags.push(Diagnostic::at(
            c,
            "concurrency.min applies to an adaptive limit only (adaptive = false: the limit is max)",
        ));
    }
    ConcurrencySpec {
        min: min.min(max),
        max,
        adaptive,
    }
}

pub(super) fn validate_timeouts(t: &TimeoutsFile, diags: &mut Vec<Diagnostic>) -> Timeouts {
    Timeouts {
        connect: duration_or(&t.connect, DEFAULT_CONNECT_TIMEOUT, diags),
        read: duration_or(&t.read, DEFAULT_READ_TIMEOUT, diags),
        write: duration_or(&t.write, DEFAULT_WRITE_TIMEOUT, diags),
        idle: duration_or(&t.idle, DEFAULT_IDLE_TIMEOUT, diags),
    }
}

pub(super) fn validate_upstream(u: &UpstreamFile, diags: &mut Vec<Diagnostic>) -> UpstreamSpec {
    let name = u.name.get_ref().clone();
    if name.is_empty() {
        diags.push(Diagnostic::at(&u.name, "upstream name must not be empty"));
    }
    let mut servers = Vec::new();
    for entry in u.servers.get_ref() {
        let (addr, weight) = match entry.get_ref() {
            ServerEntry::Addr(a) => (a, None),
            ServerEntry::Weighted(w) => (&w.addr, w.weight),
        };
        let weight = match weight {
            None => 1,
            Some(w) if (1..=1000).contains(&w) => w as u32,
            Some(_) => {
                diags.push(Diagnostic::at(
                    entry,
                    "server weight must be between 1 and 1000",
                ));
                1
            }
        };
        match target(addr) {
            Ok(target) => servers.push(ServerSpec {
                target,
                label: addr.clone(),
                weight,
            }),
            Err(e) => diags.push(Diagnostic::at(entry, e)),
        }
    }
    if u.servers.get_ref().is_empty() {
        diags.push(Diagnostic::at(
            &u.servers,
            format!("upstream `{name}` has no servers"),
        ));
    }
    let balance = super::one_of(
        &u.balance,
        "balance",
        &[
            ("round_robin", Balance::RoundRobin),
            ("weighted", Balance::Weighted),
            ("least_conn", Balance::LeastConn),
            ("hash_tenant", Balance::HashTenant),
        ],
        "",
        diags,
    );
    let protocol = super::one_of(
        &u.protocol,
        "protocol",
        &[
            ("http1", UpstreamProtocol::Http1),
            ("h2c", UpstreamProtocol::H2c),
            ("https", UpstreamProtocol::Https),
            ("h2", UpstreamProtocol::H2),
        ],
        "",
        diags,
    );
    let tls = if protocol.tls() {
        super::upstream_tls::validate(&name, u.tls.as_ref(), protocol.h2(), diags)
    } else {
        if let Some(t) = &u.tls {
            diags.push(Diagnostic::at(
                t,
                format!(
                    "upstream `{name}`: tls applies to protocol = \"https\" or \"h2\" (this one speaks plain {})",
                    if protocol.h2() { "h2c" } else { "http1" }
                ),
            ));
        }
        None
    };
    let health = u.health.as_ref().map(|h| {
        let path = h
            .path
            .as_ref()
            .map_or_else(|| "/healthz".to_string(), |p| p.get_ref().clone());
        if !path.starts_with('/') {
            if let Some(p) = &h.path {
                diags.push(Diagnostic::at(p, "health.path must start with `/`"));
            }
        }
        HealthSpec {
            path,
            host: h.host.as_ref().map(|x| x.get_ref().clone()),
            interval: duration_or(&h.interval, DEFAULT_HEALTH_INTERVAL, diags),
            timeout: duration_or(&h.timeout, DEFAULT_HEALTH_TIMEOUT, diags),
            healthy_threshold: positive(
                &h.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD as u64,
                "health.healthy_threshold",
                diags,
            ) as u32,
            unhealthy_threshold: positive(
                &h.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD as u64,
                "health.unhealthy_threshold",
                diags,
            ) as u32,
            tls: tls.clone(),
            h2: protocol == UpstreamProtocol::H2,
            grpc: grpc_health(h, protocol, diags),
        }
    });
    UpstreamSpec {
        name,
        servers,
        balance,
        protocol,
        tls,
        send_proxy: match &u.proxy_protocol {
            None => false,
            Some(v) if v.get_ref() == "v2" => true,
            Some(v) => {
                diags.push(Diagnostic::at(
                    v,
                    format!(
                        "proxy_protocol `{}` is not one of v2 (the binary version; v1 is not sent)",
                        v.get_ref()
                    ),
                ));
                false
            }
        },
        health,
        timeouts: validate_timeouts(&u.timeouts, diags),
        max_tries: positive(&u.max_tries, DEFAULT_MAX_TRIES as u64, "max_tries", diags).min(16)
            as u32,
        concurrency: validate_concurrency(u.concurrency.as_ref(), diags),
    }
}

/// `health.grpc` and `health.grpc_service`: gRPC health checking, which needs HTTP/2 to the servers.
fn grpc_health(
    h: &super::file::HealthFile,
    protocol: UpstreamProtocol,
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let on = h.grpc.as_ref().is_some_and(|g| *g.get_ref());
    if !on {
        if let Some(s) = &h.grpc_service {
            diags.push(Diagnostic::at(
                s,
                "health.grpc_service needs health.grpc = true",
            ));
        }
        return None;
    }
    if !protocol.h2() {
        if let Some(g) = &h.grpc {
            diags.push(Diagnostic::at(
                g,
                "health.grpc needs HTTP/2 to the servers: protocol = \"h2c\" or \"h2\"",
            ));
        }
        return None;
    }
    Some(
        h.grpc_service
            .as_ref()
            .map_or_else(String::new, |s| s.get_ref().clone()),
    )
}

/// Parses a server entry: an IP address with a port, or a host name with a port. Names are not looked up
/// here: `gateway validate` must pass on a machine that cannot resolve them (`backend:8081` outside the
/// compose network), and the running gateway resolves them (see `upstream::discovery`).
pub(super) fn target(addr: &str) -> Result<ServerTarget, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(ServerTarget::Addr(a));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("server `{addr}` needs a port (host:port)"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("server `{addr}`: `{port}` is not a port (1-65535)")),
    };
    if !is_host_name(host) {
        return Err(format!(
            "server `{addr}`: `{host}` is neither an IP address nor a host name (IPv6 goes in brackets: \"[::1]:8081\")"
        ));
    }
    Ok(ServerTarget::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, up to 253 bytes
/// (underscores allowed, as service records and Docker service names use them).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All digits and dots would be a mistyped IPv4 address, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_entries_are_addresses_or_names() {
        assert_eq!(
            target("127.0.0.1:8081"),
            Ok(ServerTarget::Addr("127.0.0.1:8081".parse().expect("addr")))
        );
        assert_eq!(
            target("[::1]:8081"),
            Ok(ServerTarget::Addr("[::1]:8081".parse().expect("addr")))
        );
        assert_eq!(
            target("Backend:8081"),
            Ok(ServerTarget::Name {
                host: "backend".into(),
                port: 8081
            })
        );
        assert_eq!(
            target("backend.svc.cluster.local.:80"),
            Ok(ServerTarget::Name {
                host: "backend.svc.cluster.local.".into(),
                port: 80
            })
        );
        for bad in [
            "backend",
            "backend:0",
            "backend:http",
            "backend:70000",
            "-x:80",
            "a..b:80",
            "300.1.1.1:80",
            "::1:80",
            "bad host:80",
        ] {
            assert!(target(bad).is_err(), "{bad} was accepted");
        }
    }
}
