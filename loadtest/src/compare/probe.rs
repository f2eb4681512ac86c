//! Before a target is measured on a tenant scenario, the harness checks that it does the work its row
//! claims: a forged token is refused, and (where the row says the work is the same as ours) so is a valid
//! token of another tenant. A proxy that forwarded those would be measured doing less than it claims.

use std::net::SocketAddr;
use std::time::Duration;

use crate::generator::h1::Conn;
use crate::generator::RequestSpec;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what}: expected {expected}, got {got}")]
    Status {
        what: &'static str,
        expected: &'static str,
        got: String,
    },
}

/// `req`'s head, asking the server to close the connection after answering.
fn closing_head(req: &RequestSpec) -> String {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.path, req.host
    );
    for (n, v) in &req.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// One request over a fresh connection; the status, or a description of the failure (5 s at most).
async fn status(addr: SocketAddr, req: &RequestSpec) -> Result<u16, String> {
    status_within(addr, req, Duration::from_secs(5)).await
}

/// As `status`, giving up after `limit`.
pub async fn status_within(
    addr: SocketAddr,
    req: &RequestSpec,
    limit: Duration,
) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut conn = Conn::new(stream);
    let head = closing_head(req);
    let fut = conn.exchange(head.as_bytes(), false);
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(r)) => Ok(r.status),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => Err("timeout".into()),
    }
}

/// `requests` are the scenario's (each host with its own tenant's token). `binding`: the row claims
/// tenant binding too.
pub fn check_tenant_work(
    addr: SocketAddr,
    requests: &[RequestSpec],
    binding: bool,
) -> Result<(), ProbeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProbeError::Status {
            what: "runtime",
            expected: "",
            got: e.to_string(),
        })?;
    rt.block_on(async {
        let good = &requests[0];
        let expect = |what: &'static str,
                      expected: &'static str,
                      got: Result<u16, String>,
                      ok: fn(u16) -> bool| match got {
            Ok(s) if ok(s) => Ok(()),
            Ok(s) => Err(ProbeError::Status {
                what,
                expected,
                got: s.to_string(),
            }),
            Err(e) => Err(ProbeError::Status {
                what,
                expected,
                got: e,
            }),
        };
        expect(
            "its own tenant's token",
            "2xx",
            status(addr, good).await,
            |s| (200..300).contains(&s),
        )?;
        // The same token with real bits of its signature changed.
        let mut forged = good.clone();
        if let Some(h) = forged
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            h.1 = forge(&h.1);
        }
        expect(
            "a forged signature",
            "401",
            status(addr, &forged).await,
            |s| s == 401,
        )?;
        let mut none = good.clone();
        none.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        expect("no token", "401", status(addr, &none).await, |s| s == 401)?;
        if binding && requests.len() > 1 {
            // Tenant 1's valid token on tenant 0's host.
            let mut other = good.clone();
            other.headers = requests[1].headers.clone();
            expect(
                "another tenant's token",
                "403",
                status(addr, &other).await,
                |s| s == 403,
            )?;
        }
        Ok(())
    })
}

/// `token` (or `Bearer token`) with the first character of its signature changed: all six of its bits
/// are signature bits. (The last character of an HS256 signature in unpadded base64url carries two
/// signature bits and four padding bits, so changing it may change no signature bit at all, and a
/// lenient decoder then reads the very same signature.)
pub fn forge(token: &str) -> String {
    let Some(dot) = token.rfind('.') else {
        return format!("{token}x");
    };
    let mut out = token.to_string();
    let first = token[dot + 1..].chars().next().unwrap_or('A');
    let swapped = if first == 'A' { 'B' } else { 'A' };
    out.replace_range(dot + 1..dot + 1 + first.len_utf8(), &swapped.to_string());
    out
}

/// What one response to `req` weighs as sent: its body after any content coding, without chunked
/// framing, and its `Content-Encoding` (over a fresh connection, 5 s at most).
pub fn response_size(
    addr: SocketAddr,
    req: &RequestSpec,
) -> Result<crate::report::ResponseSize, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(closing_head(req).as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    body_size(&raw)
}

/// The body size and content coding of one whole HTTP/1.1 response.
fn body_size(raw: &[u8]) -> Result<crate::report::ResponseSize, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of head")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let mut body = &raw[end + 4..];
    let field = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if status != "200" {
        return Err(format!("status {status}"));
    }
    let encoding = field("content-encoding").unwrap_or_else(|| "identity".into());
    if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut bytes = 0u64;
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk size")?;
            let size_text = String::from_utf8_lossy(&body[..line_end]);
            let size = u64::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            let n = usize::try_from(size).map_err(|e| e.to_string())?;
            if body.len() < n + 2 {
                return Err("truncated chunk".into());
            }
            bytes += size;
            body = &body[n + 2..];
        }
        return Ok(crate::report::ResponseSize { bytes, encoding });
    }
    Ok(crate::report::ResponseSize {
        bytes: body.len() as u64,
        encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_measured_without_their_chunk_framing() {
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\na;x=1\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            body_size(chunked),
            Ok(crate::report::ResponseSize {
                bytes: 13,
                encoding: "gzip".into()
            })
        );
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(
            body_size(plain),
            Ok(crate::report::ResponseSize {
                bytes: 4,
                encoding: "identity".into()
            })
        );
        assert!(body_size(b"HTTP/1.1 502 Bad\r\n\r\n").is_err());
        assert!(body_size(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    /// The forged signature differs from the real one in its decoded bytes, not only in padding bits:
    /// the old probe changed the last character ('A' <-> 'B'), which for HS256 flips a padding bit only,
    /// so a decoder that ignores trailing bits read the very same signature.
    #[test]
    fn a_forged_signature_differs_in_its_bytes() {
        use base64::Engine;
        let token = crate::scenario::mint(crate::scenario::JWT_SECRET, "t0001", "member", "j")
            .expect("token");
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_encode_padding(false)
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
        );
        let sig = |t: &str| {
            lenient
                .decode(t.rsplit('.').next().expect("signature"))
                .expect("base64url")
        };
        let forged = forge(&format!("Bearer {token}"));
        let forged = forged.strip_prefix("Bearer ").expect("prefix");
        assert_eq!(forged.len(), token.len());
        assert_ne!(sig(forged), sig(&token), "no signature byte changed");
        let mut old = token.clone();
        let last = old.pop().expect("last");
        old.push(if last == 'A' { 'B' } else { 'A' });
        if matches!(last, 'A' | 'B') {
            assert_eq!(
                sig(&old),
                sig(&token),
                "the old forgery changed a signature byte"
            );
        }
    }
}
