//! The PROXY protocol on the http and https entrypoints (`[entrypoints] proxy_protocol.from`): a
//! connection from a listed balancer must start with a PROXY header (v1 or v2), read whole within the
//! head deadline, before TLS; the client it names becomes the connection's peer, so everything that uses
//! the client address (connection caps, limits, `X-Forwarded-For`, `X-Aggios-Client-Ip`, logs, IP lists)
//! sees the client, not the balancer. From anyone else nothing is believed: their connection is served as
//! it comes, and a PROXY header it starts with is just bytes (refused by the HTTP parser or the TLS
//! handshake).

use std::time::Duration;

use ipnet::IpNet;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::io::AsyncReadExt;

use crate::support::proxy_protocol::{parse, Parsed, V2_MAX};
use crate::telemetry::metrics::metrics;

/// Why a trusted balancer's connection was closed.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("no whole PROXY header before the deadline")]
    Timeout,
    #[error("closed before a whole PROXY header: {0}")]
    Io(std::io::Error),
}

/// The peer of an accepted stream.
pub fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// The stream to serve: from a balancer in `from`, after its PROXY header, with the client it names as
/// the peer; from anyone else, as it is. `None`: a balancer's connection without a valid header in time
/// (closed, counted).
pub async fn accept(stream: Stream, from: &[IpNet], deadline: Duration) -> Option<Stream> {
    let trusted = peer_ip(&stream)
        .map(|ip| ip.to_canonical())
        .is_some_and(|ip| from.iter().any(|n| n.contains(&ip)));
    if !trusted {
        return Some(stream);
    }
    // The accepted stream is Pingora's L4 stream (the TLS handshake comes after this).
    let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
        return None;
    };
    match tokio::time::timeout(deadline, read_header(&mut l4)).await {
        Ok(Ok((consumed, source, buf))) => {
            // What came after the header belongs to the connection (a request head, a ClientHello).
            l4.rewind(&buf[consumed..]);
            if let Some(source) = source {
                let digest = SocketDigest::from_raw_fd(std::os::unix::io::AsRawFd::as_raw_fd(&*l4));
                let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
                l4.set_socket_digest(digest);
            }
            metrics()
                .proxy_protocol
                .with_label_values(&["accepted"])
                .inc();
            Some(l4)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "PROXY protocol header refused");
            metrics()
                .proxy_protocol
                .with_label_values(&["invalid"])
                .inc();
            None
        }
        Err(_) => {
            tracing::debug!(error = %Refusal::Timeout, "PROXY protocol header refused");
            metrics()
                .proxy_protocol
                .with_label_values(&["timeout"])
                .inc();
            None
        }
    }
}

/// Reads until the header is whole: its length, the source it names, and every byte read.
async fn read_header(
    l4: &mut L4Stream,
) -> Result<(usize, Option<std::net::SocketAddr>, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = l4.read(&mut chunk).await.map_err(Refusal::Io)?;
        if n == 0 {
            return Err(Refusal::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Parsed::Header { len, source } => return Ok((len, source, buf)),
            Parsed::Invalid(why) => return Err(Refusal::Invalid(why)),
            Parsed::Incomplete if buf.len() > V2_MAX => {
                return Err(Refusal::Invalid("PROXY header too long"))
            }
            Parsed::Incomplete => {}
        }
    }
}
