//! Active health checks: one checker task per server, `GET path` over a fresh connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

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
        let (addr, via, spec, set) = match server.upgrade() {
            Some(s) => (
                s.addr,
                s.via.clone(),
                s.health.load_full(),
                Arc::clone(&s.health_set),
            ),
            None => return,
        };
        let Some(spec) = spec else {
            // Checks are off for now: asleep until a reload switches them on or the server leaves.
            set.notified().await;
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

/// One active check over a fresh connection, over the upstream's TLS if it has one (the same
/// configuration and server name as requests): gRPC's `Health/Check` when `grpc` is on, else `GET path`
/// (in HTTP/2 for an `h2` upstream); a pass within the timeout is 2xx or 3xx (SERVING for gRPC). `via` is
/// the server entry (`host:port`) the address came from.
pub async fn probe(addr: SocketAddr, via: Option<&str>, spec: &HealthSpec) -> bool {
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let check = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(tls) = &spec.tls else {
            return probe_over(tcp, spec, &host, "http").await;
        };
        let name = ServerName::try_from(tls.server_name(via, addr)).ok()?;
        let stream = pingora::tls::TlsConnector::from(Arc::clone(&tls.client))
            .connect(name, tcp)
            .await
            .ok()?;
        probe_over(stream, spec, &host, "https").await
    };
    matches!(
        tokio::time::timeout(spec.timeout, check).await,
        Ok(Some(true))
    )
}

async fn probe_over<S>(io: S, spec: &HealthSpec, host: &str, scheme: &str) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(service) = &spec.grpc {
        probe_grpc(io, host, scheme, service).await
    } else if spec.h2 {
        probe_h2(io, &spec.path, host).await
    } else {
        probe_h1(io, &spec.path, host).await
    }
}

/// `grpc.health.v1.Health/Check` for `service` as one HTTP/2 stream: a pass is grpc-status 0 with the
/// answer SERVING (status 1).
async fn probe_grpc<S>(io: S, host: &str, scheme: &str, service: &str) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client, connection) = h2::client::handshake(io).await.ok()?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{scheme}://{host}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "aggios-edge-health/1")
        .body(())
        .ok()?;
    let exchange = async move {
        let mut client = client.ready().await.ok()?;
        let (response, mut body) = client.send_request(request, false).ok()?;
        body.send_data(grpc_health_request(service), true).ok()?;
        let response = response.await.ok()?;
        if response.status() != http::StatusCode::OK {
            return Some(false);
        }
        // A trailers-only answer carries its status in the head.
        if let Some(status) = response.headers().get("grpc-status") {
            if status != "0" {
                return Some(false);
            }
        }
        let mut body = response.into_body();
        let mut message = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
            if message.len() > 1024 {
                return Some(false);
            }
        }
        let trailers = body.trailers().await.ok()?;
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0");
        Some(ok && grpc_serving(&message))
    };
    tokio::select! {
        verdict = exchange => verdict,
        _ = connection => None,
    }
}

/// A gRPC message frame (uncompressed) holding `HealthCheckRequest { service }`.
fn grpc_health_request(service: &str) -> bytes::Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        // Field 1, length-delimited; the name is short (a varint of one or two bytes).
        message.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            message.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        message.push(n as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

/// Whether a gRPC message frame holds `HealthCheckResponse { status: SERVING }` (field 1 = 1).
fn grpc_serving(frame: &[u8]) -> bool {
    let Some((&[compressed, a, b, c, d], message)) = frame.split_first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if compressed != 0 || message.len() != len {
        return false;
    }
    // The only field of the message is the status enum: tag 0x08, one varint byte.
    let mut i = 0;
    while i + 1 < message.len() {
        let (tag, value) = (message[i], message[i + 1]);
        if tag == 0x08 {
            return value == 1;
        }
        i += 2;
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages_are_framed_and_read() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_health_request("pkg.Echo")[..],
            &[0, 0, 0, 0, 10, 0x0a, 8, b'p', b'k', b'g', b'.', b'E', b'c', b'h', b'o']
        );
        let long = "s".repeat(200);
        let framed = grpc_health_request(&long);
        assert_eq!(&framed[5..8], &[0x0a, 0xc8, 0x01]);
        assert!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x02]), "NOT_SERVING");
        assert!(
            !grpc_serving(&[0, 0, 0, 0, 0]),
            "UNKNOWN (the default) is not serving"
        );
        assert!(!grpc_serving(&[1, 0, 0, 0, 2, 0x08, 0x01]), "compressed");
        assert!(!grpc_serving(&[0, 0, 0, 0, 3, 0x08, 0x01]), "short");
        assert!(!grpc_serving(&[]));
    }
}
