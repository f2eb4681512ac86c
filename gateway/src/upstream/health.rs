//! Active health checks: one checker task per server, `GET path` over a fresh connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pingora::tls::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
        let (addr, via, spec) = match server.upgrade() {
            Some(s) => (s.addr, s.via.clone(), s.health.load_full()),
            None => return,
        };
        let Some(spec) = spec else {
            // Checks are off for now; a reload may switch them on.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let ok = probe(addr, via.as_deref(), &spec).await;
        match server.upgrade() {
            Some(s) => s.record_check(ok, &spec),
            None => return,
        }
        tokio::time::sleep(spec.interval).await;
    }
}

/// One active check: `GET path` over a fresh connection, over the upstream's TLS if it has one (the same
/// configuration and server name as requests), in HTTP/2 for an `h2` upstream; 2xx or 3xx within the
/// timeout is a pass. `via` is the server entry (`host:port`) the address came from.
pub async fn probe(addr: SocketAddr, via: Option<&str>, spec: &HealthSpec) -> bool {
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let check = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(tls) = &spec.tls else {
            return probe_h1(tcp, &spec.path, &host).await;
        };
        let name = ServerName::try_from(tls.server_name(via, addr)).ok()?;
        let stream = pingora::tls::TlsConnector::from(Arc::clone(&tls.client))
            .connect(name, tcp)
            .await
            .ok()?;
        if spec.h2 {
            probe_h2(stream, &spec.path, &host).await
        } else {
            probe_h1(stream, &spec.path, &host).await
        }
    };
    matches!(
        tokio::time::timeout(spec.timeout, check).await,
        Ok(Some(true))
    )
}

/// `GET path` in HTTP/1.1 with `Connection: close`; whether the status line says 2xx or 3xx.
async fn probe_h1<S>(mut stream: S, path: &str, host: &str) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aggios-edge-health/1\r\nConnection: close\r\n\r\n"
    );
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
}

/// `GET path` as one HTTP/2 stream; whether the response is 2xx or 3xx.
async fn probe_h2<S>(stream: S, path: &str, host: &str) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client, connection) = h2::client::handshake(stream).await.ok()?;
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("https://{host}{path}"))
        .header("user-agent", "aggios-edge-health/1")
        .body(())
        .ok()?;
    let exchange = async move {
        let mut client = client.ready().await.ok()?;
        let (response, _) = client.send_request(request, true).ok()?;
        let status = response.await.ok()?.status();
        Some(status.is_success() || status.is_redirection())
    };
    // The connection is driven beside the exchange; its end before an answer is a failure.
    tokio::select! {
        verdict = exchange => verdict,
        _ = connection => None,
    }
}
