//! TLS termination on the `https` entrypoint, done by the gateway itself rather than by Pingora's
//! listener, so that the handshake has a deadline of ours (Pingora's is a fixed 60 s) and every
//! outcome is counted.
//!
//! The entrypoint listens on plain TCP; each accepted connection is handshaken here with a rustls
//! config whose certificate resolver is the live [`CertStore`], then handed to the HTTP app as a
//! Pingora TLS stream (ALPN `h2` or `http/1.1`; the app picks HTTP/2 from ALPN).

use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::ServerConfig;

use super::store::{CertStore, ACME_TLS_ALPN};
use crate::metrics::metrics;

/// Why a connection did not become a TLS stream.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not complete within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(String),
    #[error("the connection is not a TCP stream")]
    NotTcp,
}

impl HandshakeError {
    /// The `result` label of `gateway_tls_handshakes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Failed(_) | HandshakeError::NotTcp => "failed",
        }
    }
}

/// The rustls server side of the `https` entrypoint.
pub struct Terminator {
    acceptor: Acceptor,
}

impl Terminator {
    /// TLS 1.2 and 1.3 with ring's modern suites (AEAD only, ECDHE only); certificates from `store`.
    pub fn new(store: Arc<CertStore>) -> Result<Terminator, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(store);
        // Server preference order: a browser offering both gets HTTP/2. `acme-tls/1` is listed so that
        // a validation ClientHello offering only it is not aborted; the resolver answers it with the
        // challenge certificate alone.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Terminator {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
        })
    }

    /// Handshakes an accepted TCP connection within `deadline`, counting the outcome.
    pub async fn accept(
        &self,
        stream: Stream,
        deadline: Duration,
    ) -> Result<Stream, HandshakeError> {
        let result = self.handshake(stream, deadline).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics().tls_handshakes.with_label_values(&[label]).inc();
        result
    }

    async fn handshake(
        &self,
        stream: Stream,
        deadline: Duration,
    ) -> Result<Stream, HandshakeError> {
        let l4 = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| HandshakeError::NotTcp)?;
        match tokio::time::timeout(deadline, self.acceptor.tls_handshake(*l4)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(HandshakeError::Failed(e.to_string())),
            Err(_) => Err(HandshakeError::Timeout(deadline)),
        }
    }
}
