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

use super::on_demand::OnDemand;
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
    store: Arc<CertStore>,
    on_demand: Option<Arc<OnDemand>>,
}

/// A ClientHello larger than this is not looked into (rustls refuses it anyway).
const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

impl Terminator {
    /// TLS 1.2 and 1.3 with ring's modern suites (AEAD only, ECDHE only); certificates from `store`.
    pub fn new(
        store: Arc<CertStore>,
        on_demand: Option<Arc<OnDemand>>,
    ) -> Result<Terminator, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn rustls::server::ResolvesServerCert>);
        // Server preference order: a browser offering both gets HTTP/2. `acme-tls/1` is listed so that
        // a validation ClientHello offering only it is not aborted; the resolver answers it with the
        // challenge certificate alone.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Terminator {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            store,
            on_demand,
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
        let mut l4 = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| HandshakeError::NotTcp)?;
        let handshake = async {
            if let Some(od) = self.on_demand.as_ref().filter(|od| od.enabled()) {
                // The resolver cannot wait; a name no certificate covers is looked into before the
                // handshake starts, from the ClientHello that is then replayed to rustls.
                if let Some(name) = peek_server_name(&mut l4).await {
                    if self.store.lookup_name(&name).is_none() {
                        od.ensure(&name).await;
                    }
                }
            }
            self.acceptor.tls_handshake(*l4).await
        };
        match tokio::time::timeout(deadline, handshake).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(HandshakeError::Failed(e.to_string())),
            Err(_) => Err(HandshakeError::Timeout(deadline)),
        }
    }
}

/// Reads the ClientHello, puts its bytes back for the handshake, and returns the SNI name (lowercase)
/// unless the hello offers `acme-tls/1` (a validation, answered from the challenge store).
async fn peek_server_name(l4: &mut L4Stream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let name = loop {
        let n = match l4.read(&mut buf).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        if acceptor.read_tls(&mut &buf[..n]).is_err() || raw.len() > MAX_HELLO_BYTES {
            break None;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let acme = hello
                    .alpn()
                    .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
                break hello
                    .server_name()
                    .filter(|_| !acme)
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            }
            Ok(None) => continue,
            Err(_) => break None,
        }
    };
    l4.rewind(&raw);
    name
}
