//! Active health checks: one checker task per server, `GET path` over a fresh connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ServerState, Upstream};
use crate::config::HealthSpec;

/// Starts the health checker of every server of `upstream` that has none yet. Each checker holds only a
/// weak reference and ends when its server leaves the config.
pub fn spawn_health_checks(upstream: &Upstream) {
    for s in &upstream.members().servers {
        if s.checker.swap(true, Ordering::AcqRel) {
            continue;
        }
        let weak = Arc::downgrade(s);
        tokio::spawn(async move { health_loop(weak).await });
    }
}

async fn health_loop(server: Weak<ServerState>) {
    loop {
        let (addr, spec) = match server.upgrade() {
            Some(s) => (s.addr, s.health.load_full()),
            None => return,
        };
        let Some(spec) = spec else {
            // Checks are off for now; a reload may switch them on.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let ok = probe(addr, &spec).await;
        match server.upgrade() {
            Some(s) => s.record_check(ok, &spec),
            None => return,
        }
        tokio::time::sleep(spec.interval).await;
    }
}

/// One active check: `GET path` over a fresh connection; 2xx or 3xx within the timeout is a pass.
pub async fn probe(addr: SocketAddr, spec: &HealthSpec) -> bool {
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aggios-edge-health/1\r\nConnection: close\r\n\r\n",
        spec.path
    );
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = stream.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = &buf[..got];
        let status = line
            .strip_prefix(b"HTTP/1.")
            .filter(|r| r.len() >= 5)
            .map(|r| &r[2..5])?;
        Some(matches!(status.first(), Some(b'2') | Some(b'3')))
    };
    matches!(
        tokio::time::timeout(spec.timeout, check).await,
        Ok(Some(true))
    )
}
