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
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.path, req.host
    );
    for (n, v) in &req.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
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
        // The same token with its signature's last character changed.
        let mut forged = good.clone();
        if let Some(h) = forged
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            let last = h.1.pop().unwrap_or('A');
            h.1.push(if last == 'A' { 'B' } else { 'A' });
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
