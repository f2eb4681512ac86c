//! DNS-01: publishing `_acme-challenge` TXT records, for wildcard certificates.
//!
//! Two providers:
//! - RFC 2136 dynamic update signed with TSIG (RFC 8945), sent to the zone's primary server (BIND,
//!   Knot, PowerDNS and most managed DNS services accept it);
//! - `exec`: a command run as `COMMAND… present|cleanup FQDN VALUE`, for anything else.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// Why a record could not be published or withdrawn.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("`{0}` is not a DNS name")]
    Name(String),
    #[error("DNS update to {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS update to {0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("DNS update refused by {server}: {rcode}")]
    Refused { server: SocketAddr, rcode: String },
    #[error("DNS hook `{command}`: {detail}")]
    Hook { command: String, detail: String },
}

pub use crate::config::{DnsProvider, Rfc2136, TsigAlgorithm};

impl TsigAlgorithm {
    fn wire_name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256.",
            TsigAlgorithm::HmacSha512 => "hmac-sha512.",
        }
    }
    fn ring(self) -> hmac::Algorithm {
        match self {
            TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5;
/// Allowed clock difference between us and the server for TSIG, in seconds.
const FUDGE: u16 = 300;
/// TTL of the published TXT record.
const TXT_TTL: u32 = 60;

/// A fully qualified name in wire format (no compression), lowercase.
fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let trimmed = name.trim_end_matches('.');
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(DnsError::Name(name.to_string()));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > 255 + 12 {
        return Err(DnsError::Name(name.to_string()));
    }
    Ok(())
}

/// An UPDATE message adding (`add`) or deleting the TXT record `fqdn` = `value` in `zone`, without
/// its TSIG record yet.
pub fn update_message(
    id: u16,
    zone: &str,
    fqdn: &str,
    value: &str,
    add: bool,
) -> Result<Vec<u8>, DnsError> {
    if value.len() > 255 {
        return Err(DnsError::Name(value.to_string()));
    }
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(OPCODE_UPDATE << 11).to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // zone
    m.extend_from_slice(&0u16.to_be_bytes()); // prerequisites
    m.extend_from_slice(&1u16.to_be_bytes()); // updates
    m.extend_from_slice(&0u16.to_be_bytes()); // additional (TSIG added when signing)
    encode_name(zone, &mut m)?;
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    encode_name(fqdn, &mut m)?;
    m.extend_from_slice(&TYPE_TXT.to_be_bytes());
    // RFC 2136 §2.5.1 adds with the zone's class; §2.5.4 deletes one RR with class NONE and TTL 0.
    m.extend_from_slice(&(if add { CLASS_IN } else { CLASS_NONE }).to_be_bytes());
    m.extend_from_slice(&(if add { TXT_TTL } else { 0 }).to_be_bytes());
    m.extend_from_slice(&((value.len() + 1) as u16).to_be_bytes());
    m.push(value.len() as u8);
    m.extend_from_slice(value.as_bytes());
    Ok(m)
}

/// Appends a TSIG record (RFC 8945 §4) signing `message` at `time` (Unix seconds).
pub fn sign(
    message: &mut Vec<u8>,
    key_name: &str,
    algorithm: TsigAlgorithm,
    secret: &[u8],
    time: u64,
) -> Result<(), DnsError> {
    let mut key = Vec::new();
    encode_name(key_name, &mut key)?;
    let mut alg = Vec::new();
    encode_name(algorithm.wire_name(), &mut alg)?;
    let time48 = &time.to_be_bytes()[2..];
    // What the MAC covers: the message as it is, then the TSIG variables.
    let mut signed = message.clone();
    signed.extend_from_slice(&key);
    signed.extend_from_slice(&CLASS_ANY.to_be_bytes());
    signed.extend_from_slice(&0u32.to_be_bytes());
    signed.extend_from_slice(&alg);
    signed.extend_from_slice(time48);
    signed.extend_from_slice(&FUDGE.to_be_bytes());
    signed.extend_from_slice(&0u16.to_be_bytes()); // error
    signed.extend_from_slice(&0u16.to_be_bytes()); // other length
    let mac = hmac::sign(&hmac::Key::new(algorithm.ring(), secret), &signed);
    let mac = mac.as_ref();
    let id = [message[0], message[1]];
    let mut rdata = alg;
    rdata.extend_from_slice(time48);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&id);
    rdata.extend_from_slice(&0u16.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    message.extend_from_slice(&key);
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    message.extend_from_slice(&rdata);
    let additional = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&additional.to_be_bytes());
    Ok(())
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH (bad TSIG key or signature?)".into(),
        10 => "NOTZONE".into(),
        other => format!("RCODE {other}"),
    }
}

impl Rfc2136 {
    async fn update(&self, fqdn: &str, value: &str, add: bool) -> Result<(), DnsError> {
        let id = fastrand::u16(..);
        let mut msg = update_message(id, &self.zone, fqdn, value, add)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        sign(&mut msg, &self.key_name, self.algorithm, &self.secret, now)?;
        let io = |source| DnsError::Io {
            server: self.server,
            source,
        };
        let bind: SocketAddr = if self.server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(self.server).await.map_err(io)?;
        socket.send(&msg).await.map_err(io)?;
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| DnsError::Timeout(self.server, self.timeout))?
                .map_err(io)?;
            // Anything that is not the answer to this message is ignored.
            if n < 12 || buf[0..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
                continue;
            }
            let rcode = buf[3] & 0x0f;
            return if rcode == 0 {
                Ok(())
            } else {
                Err(DnsError::Refused {
                    server: self.server,
                    rcode: rcode_name(rcode),
                })
            };
        }
    }
}

impl DnsProvider {
    /// Publishes `fqdn TXT value`.
    pub async fn present(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        match self {
            DnsProvider::Rfc2136(r) => r.update(fqdn, value, true).await,
            DnsProvider::Exec { command, timeout } => {
                run_hook(command, "present", fqdn, value, *timeout).await
            }
        }
    }

    /// Withdraws what [`DnsProvider::present`] published.
    pub async fn cleanup(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        match self {
            DnsProvider::Rfc2136(r) => r.update(fqdn, value, false).await,
            DnsProvider::Exec { command, timeout } => {
                run_hook(command, "cleanup", fqdn, value, *timeout).await
            }
        }
    }
}

async fn run_hook(
    command: &[String],
    action: &str,
    fqdn: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), DnsError> {
    let shown = command.join(" ");
    let err = |detail: String| DnsError::Hook {
        command: shown.clone(),
        detail,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err("empty command".into()))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .args([action, fqdn, value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| err(format!("no exit within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{action} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_message_layout() {
        let m = update_message(
            0x1234,
            "aggios.test.",
            "_acme-challenge.aggios.test.",
            "abc",
            true,
        )
        .expect("message");
        assert_eq!(&m[..12], &[0x12, 0x34, 0x28, 0, 0, 1, 0, 0, 0, 1, 0, 0]);
        // Zone section: aggios.test. SOA IN.
        assert_eq!(&m[12..25], b"\x06aggios\x04test\x00");
        assert_eq!(&m[25..29], &[0, 6, 0, 1]);
        // The update ends with TTL 60, RDLENGTH 4 and the character-string "abc".
        assert_eq!(
            &m[m.len() - 10..],
            &[0, 0, 0, 60, 0, 4, 3, b'a', b'b', b'c']
        );
        let del = update_message(1, "aggios.test", "x.aggios.test", "abc", false).expect("message");
        // Class NONE, TTL 0.
        assert_eq!(
            &del[del.len() - 12..del.len() - 4],
            &[0, 254, 0, 0, 0, 0, 0, 4]
        );
        assert!(update_message(1, "a..b", "x", "v", true).is_err());
    }

    #[test]
    fn tsig_mac_covers_message_and_variables() {
        let mut m =
            update_message(7, "aggios.test.", "x.aggios.test.", "v", true).expect("message");
        let unsigned = m.clone();
        sign(
            &mut m,
            "acme-key.",
            TsigAlgorithm::HmacSha256,
            b"secret",
            1_700_000_000,
        )
        .expect("sign");
        assert_eq!(
            u16::from_be_bytes([m[10], m[11]]),
            1,
            "ARCOUNT counts the TSIG record"
        );
        // Recompute the MAC independently from the RFC 8945 §4.3.3 layout.
        let mut vars = unsigned.clone();
        vars.extend_from_slice(b"\x08acme-key\x00");
        vars.extend_from_slice(&[0, 255, 0, 0, 0, 0]);
        vars.extend_from_slice(b"\x0bhmac-sha256\x00");
        vars.extend_from_slice(&1_700_000_000u64.to_be_bytes()[2..]);
        vars.extend_from_slice(&[1, 44, 0, 0, 0, 0]);
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"secret"), &vars);
        let tail = &m[unsigned.len()..];
        assert!(
            tail.windows(32).any(|w| w == mac.as_ref()),
            "the MAC in the TSIG record is not HMAC(message ‖ variables)"
        );
    }
}
