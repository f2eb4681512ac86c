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
use pingora::protocols::{GetSocketDigest, Stream};

use super::client_auth::Offers;
use super::store::{CertStore, ACME_TLS_ALPN};
use crate::telemetry::metrics::metrics;

/// What the https entrypoint does with a ClientHello before the handshake, for the systems that fill
/// the [`CertStore`] (implemented by `acme::Handshakes`: challenge answers another replica holds,
/// certificates for tenants' own domains). The resolver inside rustls cannot wait; this can.
#[async_trait::async_trait]
pub trait BeforeHandshake: Send + Sync {
    /// Whether ClientHellos are looked into now (peeking costs a read on every connection).
    fn active(&self) -> bool;
    /// A TLS-ALPN-01 validation for `name` whose answer the store lacks: fetch it into the store and
    /// say whether it did (it is served for this handshake only).
    async fn alpn_challenge(&self, name: &str) -> bool;
    /// A handshake for `name`, which no certificate in the store covers, from `client`.
    async fn unknown_name(&self, name: &str, client: Option<std::net::IpAddr>);
    /// The host a tenant's own domain `name` is routed as (`{tenant}.{base domain}`), if it is one:
    /// its handshake asks for a client certificate when that host's routes do.
    fn routed_as(&self, _name: &str) -> Option<String> {
        None
    }
}

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
    before: Option<Arc<dyn BeforeHandshake>>,
    offers: Arc<Offers>,
}

/// A ClientHello larger than this is not looked into (rustls refuses it anyway).
const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

impl Terminator {
    /// Certificates from `store`; a client certificate asked for on the names `offers` covers.
    pub fn new(
        store: Arc<CertStore>,
        before: Option<Arc<dyn BeforeHandshake>>,
        offers: Arc<Offers>,
    ) -> Result<Terminator, rustls::Error> {
        let config = CertStore::server_config(&store, None)?;
        Ok(Terminator {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            store,
            before,
            offers,
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
        let before = self.before.as_deref().filter(|b| b.active());
        let offer = self.offers.current();
        let mut fetched = None;
        let handshake = async {
            // The resolver cannot wait: what needs I/O is done before the handshake starts, from the
            // ClientHello, which is then replayed to rustls. The name also decides whether a client
            // certificate is asked for.
            let hello = match before.is_some() || offer.is_some() {
                true => peek_hello(&mut l4).await,
                false => None,
            };
            if let (Some(before), Some(hello)) = (before, &hello) {
                match hello {
                    // A validation for an order another replica made.
                    Hello {
                        name: Some(name),
                        acme: true,
                    } if !self.store.has_alpn_challenge(name) => {
                        fetched = before.alpn_challenge(name).await.then(|| name.clone());
                    }
                    Hello {
                        name: Some(name),
                        acme: false,
                    } if self.store.lookup_name(name).is_none() => {
                        let client = l4
                            .get_socket_digest()
                            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
                        before.unknown_name(name, client).await;
                    }
                    _ => {}
                }
            }
            let acceptor = match (&offer, &hello) {
                (Some(o), Some(h))
                    if !h.acme
                        && (o.covers(h.name.as_deref())
                            || h.name
                                .as_deref()
                                .and_then(|n| self.before.as_deref()?.routed_as(n))
                                .is_some_and(|host| o.covers(Some(&host)))) =>
                {
                    &o.acceptor
                }
                _ => &self.acceptor,
            };
            acceptor.tls_handshake(*l4).await
        };
        let result = tokio::time::timeout(deadline, handshake).await;
        if let Some(name) = fetched {
            // Served once for this validation; the ordering replica keeps its own copy.
            self.store.clear_challenges(&[name], &[]);
        }
        match result {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(HandshakeError::Failed(e.to_string())),
            Err(_) => Err(HandshakeError::Timeout(deadline)),
        }
    }
}

/// What the ClientHello asked for.
struct Hello {
    /// The SNI name, lowercase.
    name: Option<String>,
    /// Whether it offers `acme-tls/1` (a TLS-ALPN-01 validation).
    acme: bool,
}

/// Reads the ClientHello and puts its bytes back for the handshake.
async fn peek_hello(l4: &mut L4Stream) -> Option<Hello> {
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
                break Some(Hello {
                    name: hello
                        .server_name()
                        .map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
                    acme,
                });
            }
            Ok(None) => continue,
            Err(_) => break None,
        }
    };
    l4.rewind(&raw);
    name
}
