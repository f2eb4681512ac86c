//! `[tls.acme.dns]`: where DNS-01 records go (the provider that `acme::dns` drives), validated with
//! the rest of `[tls]`.

use std::net::SocketAddr;
use std::time::Duration;

/// TSIG algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// As written in configs (`hmac-sha256`).
    pub fn parse(s: &str) -> Option<TsigAlgorithm> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
            "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
            _ => None,
        }
    }
}

/// An RFC 2136 server and its TSIG key. The secret never appears in `Debug` output.
#[derive(Clone, PartialEq)]
pub struct Rfc2136 {
    pub server: SocketAddr,
    /// The zone to update, as a fully qualified name (`aggios.app.`).
    pub zone: String,
    pub key_name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where DNS-01 records go.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsProvider {
    Rfc2136(Rfc2136),
    Exec {
        command: Vec<String>,
        timeout: Duration,
    },
}
