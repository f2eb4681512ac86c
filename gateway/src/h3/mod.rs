//! The HTTP/3 entrypoint (`[entrypoints] h3`, UDP): QUIC connections (quinn, on rustls with the
//! https entrypoint's live certificate store) whose requests are handed to the same Pingora proxy as
//! the TCP entrypoints' (see [`session`]), so that one code path decides for every protocol.
//!
//! Per new client (the accept loop, below the request path): address validation with a QUIC Retry
//! once more than `[h3] retry_above` handshakes are in progress, at most `max_connections_per_ip`
//! connections per address and `[overload] max_connections` in all, a handshake deadline. Per
//! connection: `max_streams` request streams at once, an idle timeout, and on shutdown a GOAWAY and
//! the requests in progress finished. QUIC's anti-amplification limit (3× the bytes received from an
//! unvalidated address, RFC 9000 §8.1) is quinn's, kept exactly by vendored patch 0014. 0-RTT is off
//! unless `[h3] zero_rtt` (see [`early`] for what is then accepted in early data and how replays are
//! refused).
//!
//! A name with no certificate yet (on-demand TLS) is refused at the QUIC handshake and issued on the
//! TCP path: clients learn of HTTP/3 from an `Alt-Svc` field of an HTTPS response over TCP, which that
//! handshake's issuance made possible.

pub mod early;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::h3::{Congestion, H3Settings};
use crate::telemetry::metrics::metrics;
use crate::tls::store::CertStore;
use session::{connection_digest, request_head, H3Session};

/// The ALPN protocol of HTTP/3 (RFC 9114 §3.1).
pub const H3_ALPN: &[u8] = b"h3";

/// Why the HTTP/3 entrypoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("entrypoints.h3 {addr}: cannot bind the UDP socket: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the QUIC TLS configuration: {0}")]
    Tls(String),
    #[error("entrypoints.h3 {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The QUIC server configuration: TLS 1.3 only (QUIC has no other), ALPN `h3`, certificates from the
/// live store (SNI, ACME and on-demand ones as they are issued), early data only with
/// `[h3] zero_rtt` (single-use tickets then, see [`early`]), and the limits.
pub fn server_config(
    certs: &Arc<CertStore>,
    settings: &H3Settings,
) -> Result<quinn::ServerConfig, H3Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| H3Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(certs) as Arc<dyn rustls::server::ResolvesServerCert>);
    tls.alpn_protocols = vec![H3_ALPN.to_vec()];
    if settings.zero_rtt {
        // QUIC allows no other size than "unlimited" (RFC 9001 §4.6.1): the stream credit bounds it.
        tls.max_early_data_size = u32::MAX;
        tls.session_storage = Arc::new(early::SingleUseTickets::new(
            early::TICKETS_KEPT,
            settings.zero_rtt_window,
        ));
        // One ticket per connection: each resumes once.
        tls.send_tls13_tickets = 1;
    } else {
        tls.max_early_data_size = 0;
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(
            quinn::VarInt::from_u64(settings.max_streams).unwrap_or(quinn::VarInt::MAX),
        )
        // The client's control stream and its two QPACK streams (RFC 9114 §6.2, RFC 9204 §4.2), and
        // room for unknown (grease) ones, which HTTP/3 ignores.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(quinn::IdleTimeout::try_from(settings.idle_timeout).ok());
    match settings.congestion {
        Congestion::Cubic => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::Bbr => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
    };
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the entrypoint's UDP socket (at build time, so that an address in use fails the start).
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, H3Error> {
    std::net::UdpSocket::bind(addr).map_err(|source| H3Error::Bind { addr, source })
}

/// Open connections per client address (entries removed at zero: as many as open connections).
#[derive(Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`] and in the entrypoint's total, given back on drop.
struct Slot {
    table: Arc<PerAddress>,
    total: Arc<AtomicUsize>,
    ip: IpAddr,
}

impl PerAddress {
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_ip: usize,
        total: &Arc<AtomicUsize>,
        max_total: usize,
    ) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if total.load(Ordering::Relaxed) >= max_total {
            return Err("refused_limit");
        }
        let n = open.entry(ip).or_insert(0);
        if *n >= per_ip {
            return Err("refused_address");
        }
        *n += 1;
        total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            table: Arc::clone(self),
            total: Arc::clone(total),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a handshake in progress while it lives.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(Arc::clone(count))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open connection in `gateway_h3_connections_active` while it lives.
struct Active;

impl Active {
    fn new() -> Self {
        metrics().h3_connections_active.inc();
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics().h3_connections_active.dec();
    }
}

/// The HTTP/3 entrypoint as a Pingora background service: it runs for the server's life and stops
/// with its shutdown watch (GOAWAY, requests in progress finished within the grace).
pub struct H3Service<A> {
    pub addr: SocketAddr,
    pub settings: H3Settings,
    pub certs: Arc<CertStore>,
    /// The proxy the TCP entrypoints use (its own instance, with the same state).
    pub app: Arc<A>,
    /// `[limits] max_header_bytes`: the request head's QPACK-decoded size limit is twice it (as for
    /// HTTP/2, so that the edge answers a head over the limit with its JSON 431).
    pub max_header_bytes: usize,
    /// `[overload] max_connections`.
    pub max_connections: usize,
    /// The socket bound at build time; `None` after an `--upgrade`, when the running gateway still
    /// holds the port: it is bound once the old process lets it go.
    pub socket: Mutex<Option<std::net::UdpSocket>>,
    /// How long to wait for the port on `--upgrade`.
    pub bind_wait: Duration,
}

impl<A> H3Service<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The bound socket: the one from build time, or (after an upgrade) the port once free.
    async fn socket(&self, shutdown: &ShutdownWatch) -> Option<std::net::UdpSocket> {
        if let Some(s) = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Some(s);
        }
        let deadline = Instant::now() + self.bind_wait;
        loop {
            match bind(self.addr) {
                Ok(s) => return Some(s),
                Err(e) if Instant::now() >= deadline || *shutdown.borrow() => {
                    tracing::error!(error = %e, "HTTP/3 entrypoint not started");
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn serve(&self, mut shutdown: ShutdownWatch) -> Result<(), H3Error> {
        let Some(socket) = self.socket(&shutdown).await else {
            return Ok(());
        };
        let config = server_config(&self.certs, &self.settings)?;
        let addr = self.addr;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| H3Error::Endpoint { addr, source })?;
        let local = endpoint.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, "HTTP/3 entrypoint listening (UDP)");
        let per_address = Arc::new(PerAddress::default());
        let total = Arc::new(AtomicUsize::new(0));
        let handshaking = Arc::new(AtomicUsize::new(0));
        let handshakes = &metrics().h3_handshakes;
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => break,
                },
                _ = shutdown.changed() => break,
            };
            if handshaking.load(Ordering::Relaxed) >= self.settings.retry_above as usize
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                handshakes.with_label_values(&["retry"]).inc();
                // A Retry costs one small packet and no state: the client must echo its token.
                let _ = incoming.retry();
                continue;
            }
            let remote = incoming.remote_address();
            let slot = match per_address.acquire(
                remote.ip(),
                self.settings.max_connections_per_ip as usize,
                &total,
                self.max_connections,
            ) {
                Ok(s) => s,
                Err(result) => {
                    handshakes.with_label_values(&[result]).inc();
                    incoming.refuse();
                    continue;
                }
            };
            let server = incoming
                .local_ip()
                .map_or(local, |ip| SocketAddr::new(ip, local.port()));
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    handshakes.with_label_values(&["failed"]).inc();
                    tracing::debug!(client = %remote, error = %e, "QUIC handshake refused");
                    continue;
                }
            };
            let conn = Connection {
                app: Arc::clone(&self.app),
                handshake: Handshaking::new(&handshaking),
                slot,
                server,
                handshake_timeout: self.settings.handshake_timeout,
                zero_rtt: self.settings.zero_rtt,
                max_field_section: (self.max_header_bytes as u64).saturating_mul(2),
                shutdown: shutdown.clone(),
            };
            // Connections spread over the server's runtimes, as Pingora spreads TCP ones.
            pingora_runtime::current_handle().spawn(conn.run(connecting));
        }
        // Stopping: no new connections (clients are refused and fall back to TCP), the open ones get
        // GOAWAY from their own tasks and finish their requests.
        endpoint.set_server_config(None);
        endpoint.wait_idle().await;
        Ok(())
    }
}

#[async_trait]
impl<A> BackgroundService for H3Service<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Err(e) = self.serve(shutdown).await {
            tracing::error!(error = %e, "HTTP/3 entrypoint stopped");
        }
    }
}

/// Logs a connection's transport figures when it ends (debug level: `RUST_LOG=gateway::h3=debug`):
/// what an operator looks at when HTTP/3 is slow on some network.
struct ConnectionStats(quinn::Connection);

impl Drop for ConnectionStats {
    fn drop(&mut self) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let s = self.0.stats();
            tracing::debug!(
                client = %self.0.remote_address(),
                rtt_ms = s.path.rtt.as_secs_f64() * 1000.0,
                cwnd = s.path.cwnd,
                sent_packets = s.path.sent_packets,
                lost_packets = s.path.lost_packets,
                congestion_events = s.path.congestion_events,
                udp_tx_datagrams = s.udp_tx.datagrams,
                udp_rx_datagrams = s.udp_rx.datagrams,
                "HTTP/3 connection ended"
            );
        }
    }
}

/// One QUIC connection, from its handshake to its last request.
struct Connection<A> {
    app: Arc<A>,
    handshake: Handshaking,
    slot: Slot,
    server: SocketAddr,
    handshake_timeout: Duration,
    /// Requests may arrive before the handshake completes (0-RTT, see [`early`]).
    zero_rtt: bool,
    max_field_section: u64,
    shutdown: ShutdownWatch,
}

impl<A> Connection<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn run(self, connecting: quinn::Connecting) {
        let Connection {
            app,
            handshake,
            slot,
            server,
            handshake_timeout,
            zero_rtt,
            max_field_section,
            mut shutdown,
        } = self;
        let handshakes = &metrics().h3_handshakes;
        let deadline = tokio::time::Instant::now() + handshake_timeout;
        // With 0-RTT, the connection serves (early) requests while its handshake runs; without, it
        // exists once the handshake is done. (A server-side `into_0rtt` always succeeds.)
        let turned = if zero_rtt {
            connecting.into_0rtt()
        } else {
            Err(connecting)
        };
        let (quic, mut completion) = match turned {
            Ok((quic, completion)) => (quic, Some(completion)),
            Err(connecting) => match complete_handshake(connecting, deadline).await {
                Some(quic) => (quic, None),
                None => return,
            },
        };
        let state = Arc::new(match completion {
            Some(_) => early::HandshakeState::default(),
            None => early::HandshakeState::complete(),
        });
        let mut life = Lifecycle {
            handshake: Some(handshake),
            active: None,
        };
        if completion.is_none() {
            life.established();
        }
        let _slot = slot;
        let client = quic.remote_address();
        let digest = connection_digest(None);
        let _stats = ConnectionStats(quic.clone());
        let mut builder = h3::server::builder();
        builder.max_field_section_size(max_field_section);
        let build = builder.build::<_, Bytes>(h3_quinn::Connection::new(quic.clone()));
        let mut h3 = match tokio::time::timeout_at(deadline, build).await {
            Ok(Ok(h3)) => h3,
            Ok(Err(e)) => {
                tracing::debug!(client = %client, error = %e, "HTTP/3 connection set-up failed");
                state.set_lost();
                return;
            }
            Err(_) => {
                handshakes.with_label_values(&["timeout"]).inc();
                state.set_lost();
                return;
            }
        };
        let mut draining = *shutdown.borrow();
        if draining {
            let _ = h3.shutdown(0).await;
        }
        let handshake_deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(handshake_deadline);
        loop {
            tokio::select! {
                // First: a request that arrives in the same wake-up as the handshake's completion is
                // a 1-RTT one (quinn signals completion before it yields 1-RTT streams).
                biased;
                _ = async {
                    match completion.as_mut() {
                        Some(c) => c.await,
                        None => std::future::pending().await,
                    }
                }, if completion.is_some() => {
                    completion = None;
                    if quic.close_reason().is_some() {
                        handshakes.with_label_values(&["failed"]).inc();
                        break;
                    }
                    life.established();
                    state.set_complete();
                }
                _ = &mut handshake_deadline, if completion.is_some() => {
                    handshakes.with_label_values(&["timeout"]).inc();
                    quic.close(quinn::VarInt::from_u32(0), b"handshake timeout");
                    break;
                }
                accepted = h3.accept() => match accepted {
                    Ok(Some(resolver)) => {
                        let app = Arc::clone(&app);
                        let digest = digest.clone();
                        let shutdown = shutdown.clone();
                        let state = Arc::clone(&state);
                        tokio::spawn(async move {
                            let (req, mut stream) = match resolver.resolve_request().await {
                                Ok(r) => r,
                                // h3 has answered the stream (reset, or 431 for a head too large).
                                Err(e) => {
                                    tracing::debug!(client = %client, error = %e, "HTTP/3 request refused");
                                    return;
                                }
                            };
                            let mut head = match request_head(req) {
                                Ok(h) => h,
                                Err(e) => {
                                    // RFC 9114 §4.1.2: a malformed request is a stream error.
                                    metrics().malformed.inc();
                                    tracing::debug!(client = %client, error = %e, "malformed HTTP/3 request");
                                    stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
                                    stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
                                    return;
                                }
                            };
                            if !state.is_complete() && !early_data_admitted(&mut head, &state).await {
                                tracing::debug!(client = %client, "early request dropped: the handshake never completed");
                                stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
                                stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                                return;
                            }
                            let session = H3Session::new(head, stream, digest, client, server);
                            app.process_new_http(ServerSession::new_custom(Box::new(session)), &shutdown)
                                .await;
                        });
                    }
                    // GOAWAY exchanged and every request done, or the connection closed.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client = %client, error = %e, "HTTP/3 connection ended");
                        break;
                    }
                },
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    // GOAWAY: no request stream after the last one accepted; those run to their end.
                    let _ = h3.shutdown(0).await;
                }
            }
        }
        // Requests still held for a handshake that did not complete are dropped.
        state.set_lost();
        drop(life);
    }
}

/// A connection's place in the handshakes in progress, then (once established) in the open ones.
struct Lifecycle {
    handshake: Option<Handshaking>,
    active: Option<Active>,
}

impl Lifecycle {
    /// The handshake completed: counted `accepted`, and the connection open from now on.
    fn established(&mut self) {
        self.handshake = None;
        metrics()
            .h3_handshakes
            .with_label_values(&["accepted"])
            .inc();
        self.active = Some(Active::new());
    }
}

/// The handshake of a connection served once it completes (0-RTT off), within `deadline`.
async fn complete_handshake(
    connecting: quinn::Connecting,
    deadline: tokio::time::Instant,
) -> Option<quinn::Connection> {
    let handshakes = &metrics().h3_handshakes;
    match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            handshakes.with_label_values(&["failed"]).inc();
            tracing::debug!(error = %e, "QUIC handshake failed");
            None
        }
        Err(_) => {
            handshakes.with_label_values(&["timeout"]).inc();
            None
        }
    }
}

/// A request that reached the edge before its connection's handshake completed (0-RTT): a safe
/// method goes on marked `Early-Data: 1`; any other waits for the handshake. False: the handshake
/// never completed and the request must not be served.
async fn early_data_admitted(
    head: &mut pingora::http::RequestHeader,
    state: &early::HandshakeState,
) -> bool {
    let decisions = &metrics().h3_early_requests;
    if early::safe_method(&head.method) {
        decisions.with_label_values(&["forwarded"]).inc();
        // RFC 8470 §5.1: the origin may answer 425 Too Early. A value the client sent is replaced.
        let _ = head.insert_header("early-data", "1");
        return true;
    }
    decisions.with_label_values(&["held"]).inc();
    if state.wait().await {
        return true;
    }
    decisions.with_label_values(&["dropped"]).inc();
    false
}
