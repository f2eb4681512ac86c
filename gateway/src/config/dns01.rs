//! `[tls.acme.dns]`: where DNS-01 records go (the provider that `acme::dns` drives), validated with
//! the rest of `[tls]`.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::file::DnsFile;
use super::{duration_or, is_hostname, Diagnostic};

/// How long a DNS update or hook may take unless `dns.timeout` says otherwise.
pub const DEFAULT_DNS01_TIMEOUT: Duration = Duration::from_secs(10);

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

pub(super) fn validate_dns(d: &DnsFile, diags: &mut Vec<Diagnostic>) -> Option<DnsProvider> {
    let timeout = duration_or(&d.timeout, DEFAULT_DNS01_TIMEOUT, diags);
    let need = |v: &Option<Spanned<String>>, key: &str, diags: &mut Vec<Diagnostic>| {
        if v.is_none() {
            diags.push(Diagnostic::at(
                &d.provider,
                format!("dns provider `{}` needs `{key}`", d.provider.get_ref()),
            ));
        }
        v.as_ref().map(|s| s.get_ref().clone())
    };
    match d.provider.get_ref().as_str() {
        "rfc2136" => {
            let server =
                need(&d.server, "server", diags).and_then(|s| match s.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        diags.push(Diagnostic::at(
                            d.server.as_ref().expect("checked"),
                            format!(
                                "server `{s}` is not an IP:port address (e.g. \"10.0.0.53:53\")"
                            ),
                        ));
                        None
                    }
                });
            let zone = need(&d.zone, "zone", diags).and_then(|z| {
                let v = z.trim_end_matches('.').to_ascii_lowercase();
                if is_hostname(&v) {
                    Some(format!("{v}."))
                } else {
                    diags.push(Diagnostic::at(
                        d.zone.as_ref().expect("checked"),
                        format!("zone `{z}` is not a DNS name"),
                    ));
                    None
                }
            });
            let key_name = need(&d.key_name, "key_name", diags);
            let algorithm = match &d.algorithm {
                None => Some(TsigAlgorithm::HmacSha256),
                Some(a) => {
                    let alg = TsigAlgorithm::parse(a.get_ref());
                    if alg.is_none() {
                        diags.push(Diagnostic::at(
                            a,
                            "algorithm must be hmac-sha256 or hmac-sha512",
                        ));
                    }
                    alg
                }
            };
            let secret = need(&d.secret_env, "secret_env", diags).and_then(|var| {
                let at = d.secret_env.as_ref().expect("checked");
                match std::env::var(&var) {
                    Ok(v) => match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                        Ok(s) if !s.is_empty() => Some(s),
                        _ => {
                            diags.push(Diagnostic::at(
                                at,
                                format!("`{var}` must hold the TSIG secret, base64 (as in the server's key file)"),
                            ));
                            None
                        }
                    },
                    Err(_) => {
                        diags.push(Diagnostic::at(at, format!("environment variable `{var}` is not set")));
                        None
                    }
                }
            });
            for (v, key) in [(&d.command, "command")] {
                if let Some(v) = v {
                    diags.push(Diagnostic::at(
                        v,
                        format!("`{key}` belongs to provider = \"exec\""),
                    ));
                }
            }
            Some(DnsProvider::Rfc2136(Rfc2136 {
                server: server?,
                zone: zone?,
                key_name: key_name?,
                algorithm: algorithm?,
                secret: secret?,
                timeout,
            }))
        }
        "exec" => {
            let Some(command) = &d.command else {
                diags.push(Diagnostic::at(
                    &d.provider,
                    "dns provider `exec` needs `command` (e.g. [\"scripts/dns-hook\"])",
                ));
                return None;
            };
            if command.get_ref().is_empty() || command.get_ref()[0].is_empty() {
                diags.push(Diagnostic::at(command, "command must name a program"));
                return None;
            }
            for (v, key) in [
                (&d.server, "server"),
                (&d.zone, "zone"),
                (&d.key_name, "key_name"),
                (&d.algorithm, "algorithm"),
                (&d.secret_env, "secret_env"),
            ] {
                if let Some(v) = v {
                    diags.push(Diagnostic::at(
                        v,
                        format!("`{key}` belongs to provider = \"rfc2136\""),
                    ));
                }
            }
            Some(DnsProvider::Exec {
                command: command.get_ref().clone(),
                timeout,
            })
        }
        other => {
            diags.push(Diagnostic::at(
                &d.provider,
                format!("dns provider `{other}` is not one of rfc2136, exec"),
            ));
            None
        }
    }
}
