//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer sends before a
//! connection's first byte: the client's address as the balancer saw it. Pure: [`parse`] reads a prefix
//! of the connection's bytes and says whether the header is complete, where it ends and what source it
//! names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature of a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;
/// The longest version 2 header accepted (16-byte head and its TLVs); balancers send a few dozen bytes.
pub const V2_MAX: usize = 16 + 1024;

/// What a prefix of a connection's bytes holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet to decide.
    Incomplete,
    /// A whole header of `len` bytes. `source`: the client's address, or `None` when the header names
    /// none (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's own health check, or a family without one):
    /// the connection's peer is then the client.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// Parses the PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Parsed::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 {
            Parsed::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parsed::Invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return Parsed::Invalid("PROXY v1 line is not ASCII");
    };
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header { len, source: None },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let addr = |s: &str| -> Option<IpAddr> {
                if v4 {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |s: &str| -> Option<u16> {
                // Decimal, no sign or leading zeros (the spec's form).
                (!s.is_empty()
                    && s.len() <= 5
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0')))
                .then(|| s.parse().ok())
                .flatten()
            };
            match (addr(src), addr(dst), port(sport), port(dport)) {
                (Some(ip), Some(_), Some(p), Some(_)) => Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(ip, p)),
                },
                _ => Parsed::Invalid("PROXY v1 addresses or ports malformed"),
            }
        }
        _ => Parsed::Invalid("PROXY v1 line malformed"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 version is not 2");
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addrs = &buf[16..len];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (a health check); the peer is the client.
        0x0 => Parsed::Header { len, source: None },
        0x1 => match family >> 4 {
            // AF_INET: src(4) dst(4) sport(2) dport(2).
            0x1 if addrs.len() >= 12 => {
                let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
                let port = u16::from_be_bytes([addrs[8], addrs[9]]);
                Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V4(ip), port)),
                }
            }
            // AF_INET6: src(16) dst(16) sport(2) dport(2).
            0x2 if addrs.len() >= 36 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addrs[..16]);
                let port = u16::from_be_bytes([addrs[32], addrs[33]]);
                Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
                }
            }
            0x1 | 0x2 => Parsed::Invalid("PROXY v2 address block too short"),
            // AF_UNSPEC, AF_UNIX: no address of a client on the internet.
            0x0 | 0x3 => Parsed::Header { len, source: None },
            _ => Parsed::Invalid("PROXY v2 address family unknown"),
        },
        _ => Parsed::Invalid("PROXY v2 command unknown"),
    }
}

/// A version 2 header (`PROXY`, TCP) for `source` → `destination`: what the gateway sends to an upstream
/// that wants one, and what the tests send.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: 41,
                source: src("192.0.2.7:56324")
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n"),
            Parsed::Header {
                len: 45,
                source: src("[2001:db8::7]:4000")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        // Every prefix of a valid line is incomplete, never invalid.
        for i in 0..40 {
            assert_eq!(parse(&line[..i]), Parsed::Incomplete, "{i}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 0443 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 443\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    #[test]
    fn version_2_headers() {
        let v4 = v2_header(
            "192.0.2.7:56324".parse().expect("a"),
            "10.0.0.1:443".parse().expect("a"),
        );
        assert_eq!(v4.len(), 28);
        let mut with_data = v4.clone();
        with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&with_data),
            Parsed::Header {
                len: 28,
                source: src("192.0.2.7:56324")
            }
        );
        for i in 0..28 {
            assert_eq!(parse(&v4[..i]), Parsed::Incomplete, "{i}");
        }
        let v6 = v2_header(
            "[2001:db8::7]:4000".parse().expect("a"),
            "[2001:db8::1]:443".parse().expect("a"),
        );
        assert_eq!(
            parse(&v6),
            Parsed::Header {
                len: 52,
                source: src("[2001:db8::7]:4000")
            }
        );
        // LOCAL (a balancer's health check), with a TLV after the addresses: no source.
        let mut local = v4.clone();
        local[12] = 0x20;
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 28,
                source: None
            }
        );
        let mut tlv = v4.clone();
        tlv[15] = 12 + 5;
        tlv.extend_from_slice(&[0x02, 0x00, 0x02, b'h', b'i']);
        assert_eq!(
            parse(&tlv),
            Parsed::Header {
                len: 33,
                source: src("192.0.2.7:56324")
            }
        );
        let mut bad_version = v4.clone();
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Parsed::Invalid(_)));
        let mut short = v4.clone();
        short[15] = 4;
        assert!(matches!(parse(&short[..20]), Parsed::Invalid(_)));
        let mut huge = v4;
        huge[14] = 0xff;
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }
}
