//! HTTP/3 on one QUIC connection (quinn + h3; one request at a time per connection, as the HTTP/2
//! generator, so a connection count means the same in every protocol). Each connection has its own UDP
//! socket, as separate clients would.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::stats::Failure;

pub struct Conn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// Kept for the connection's life: dropping the endpoint closes its socket.
    _endpoint: quinn::Endpoint,
}

/// A client endpoint configuration from the run's TLS configuration, with ALPN `h3`.
pub fn client_config(tls: &rustls::ClientConfig) -> Result<quinn::ClientConfig, String> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

impl Conn {
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: &quinn::ClientConfig,
    ) -> Result<Conn, Failure> {
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|_| Failure::Connect)?;
        endpoint.set_default_client_config(config.clone());
        let quic = endpoint
            .connect(addr, server_name)
            .map_err(|_| Failure::Connect)?
            .await
            .map_err(|_| Failure::Connect)?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // Drives the connection until it closes; its error shows on the next request.
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Conn {
            send,
            _endpoint: endpoint,
        })
    }

    /// Sends one request and reads its response body to the end; returns the status.
    pub async fn exchange(
        &mut self,
        head: &http::Request<()>,
        body: &Bytes,
    ) -> Result<u16, Failure> {
        let mut req = http::Request::new(());
        *req.method_mut() = head.method().clone();
        *req.uri_mut() = head.uri().clone();
        *req.headers_mut() = head.headers().clone();
        let mut stream = self.send.send_request(req).await.map_err(|_| Failure::Io)?;
        if !body.is_empty() {
            stream
                .send_data(body.clone())
                .await
                .map_err(|_| Failure::Io)?;
        }
        stream.finish().await.map_err(|_| Failure::Io)?;
        let resp = stream
            .recv_response()
            .await
            .map_err(|_| Failure::Protocol)?;
        while let Some(mut chunk) = stream.recv_data().await.map_err(|_| Failure::Io)? {
            chunk.advance(chunk.remaining());
        }
        Ok(resp.status().as_u16())
    }
}
