//! `proxy_protocol = "v2"` on an upstream: every connection to its servers starts with a PROXY protocol
//! v2 header naming the client's connection (its source, and the gateway address it reached), for
//! servers that want the client's address below HTTP. A connection then carries one client connection's
//! requests only: the peer's pool key includes that client connection, so a pooled connection is never
//! handed to another client.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, OrErr};
use tokio::io::AsyncWriteExt;

use crate::support::proxy_protocol::v2_header;

/// Connects over TCP and writes the header before anything else.
#[derive(Debug)]
pub struct SendProxy {
    header: Vec<u8>,
    timeout: Duration,
}

impl SendProxy {
    /// For the client connection `source` → `destination`, connecting within `timeout`.
    pub fn new(source: SocketAddr, destination: SocketAddr, timeout: Duration) -> SendProxy {
        SendProxy {
            header: v2_header(source, destination),
            timeout,
        }
    }

    /// The pool key of connections made for the client connection `source` → `destination`.
    pub fn pool_key(source: SocketAddr, destination: SocketAddr) -> u64 {
        crate::support::hash64(format!("{source}>{destination}").as_bytes())
    }
}

#[async_trait]
impl L4Connect for SendProxy {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let Some(inet) = addr.as_inet().copied() else {
            return Error::e_explain(
                ErrorType::ConnectError,
                "PROXY protocol to an upstream needs a TCP address",
            );
        };
        let connect = async {
            let mut tcp = tokio::net::TcpStream::connect(inet).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(&self.header).await?;
            Ok::<_, std::io::Error>(tcp)
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(tcp)) => Ok(Stream::from(tcp)),
            Ok(Err(e)) => Err(e).or_err(
                ErrorType::ConnectError,
                "connecting to an upstream that takes a PROXY header",
            ),
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!(
                    "connecting to {inet} (PROXY protocol) timed out after {:?}",
                    self.timeout
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_connection_has_its_own_pool_key() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "192.0.2.1:40000".parse().expect("addr"),
            "192.0.2.1:40001".parse().expect("addr"),
        );
        let gw: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        assert_eq!(SendProxy::pool_key(a, gw), SendProxy::pool_key(a, gw));
        assert_ne!(SendProxy::pool_key(a, gw), SendProxy::pool_key(b, gw));
    }
}
