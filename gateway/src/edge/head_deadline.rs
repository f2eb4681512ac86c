//! Slow-client protection: the first request head of a connection must be complete within
//! `limits.header_timeout` of the accept (of the TLS handshake's end on `https`), whatever the client
//! sent; each later head on a keep-alive connection within `header_timeout` of its first byte.
//!
//! Pingora's per-read timeout restarts on every read, so a client trickling one header line every few
//! seconds (slowloris) would hold a connection forever. [`HeadDeadlineApp`] wraps each accepted stream
//! in a [`DeadlineStream`] whose clock runs from the accept; the proxy stops it once the head is parsed
//! ([`head_done`]) and re-arms it for the first byte of the next head when the request ends
//! ([`request_done`]).
//!
//! With h2c on, Pingora peeks for the 24-byte HTTP/2 preface before any HTTP/1 session exists. That
//! peek goes through [`Peek::try_peek`], which [`DeadlineStream`] implements itself: under the same
//! deadline, and done as soon as the bytes differ from the preface (a short HTTP/1 request such as
//! `GET / HTTP/1.0\r\n\r\n` is answered at once instead of waiting for 24 bytes). HTTP/2 connections are
//! then left to h2's flow control and `limits.h2_idle_timeout`.
//!
//! Pingora also answers two refusals itself, before any hook of ours runs: a request head that its
//! parser rejects (400: obs-fold, conflicting `Content-Length`, a `Transfer-Encoding` other than
//! chunked, …) and `CONNECT` (405). Its answer has an empty body and no request id, and no access-log
//! line or metric would record it. A response written while a head is still being read can only be one
//! of those, so [`DeadlineStream`] writes our JSON error in its place, counts it and logs it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::edge::error::EdgeError;
use crate::edge::state::GatewayState;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::metrics;

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const OFF: u8 = 3;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A downstream stream with a deadline on request heads.
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    state: AtomicU8,
    /// When the head being read (or awaited, on a new connection) is due.
    head_deadline: tokio::time::Instant,
    /// The timer for `head_deadline`, made on the first read that pends and reset after that: a head
    /// that arrives whole in one read (the common case on keep-alive) never touches the timer wheel.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is set to `head_deadline` and registered with the task.
    armed: bool,
    first_read: bool,
    /// Bytes read by [`Peek::try_peek`], handed out again before any new read.
    replay: Vec<u8>,
    replay_pos: usize,
    gateway: Arc<GatewayState>,
    /// Our answer in place of Pingora's own refusal, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
    /// Counts the connection against the entrypoint's caps for as long as it is open.
    _connection: Option<super::connections::ConnectionGuard>,
}

impl std::fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl DeadlineStream {
    /// A new connection: the clock for its first head starts now.
    fn new(
        inner: Stream,
        timeout: Duration,
        gateway: Arc<GatewayState>,
        connection: Option<super::connections::ConnectionGuard>,
    ) -> DeadlineStream {
        DeadlineStream {
            inner,
            timeout,
            state: AtomicU8::new(HEAD),
            head_deadline: tokio::time::Instant::now() + timeout,
            sleep: None,
            armed: false,
            first_read: true,
            replay: Vec::new(),
            replay_pos: 0,
            gateway,
            refusal: None,
            _connection: connection,
        }
    }

    /// Starts our answer in place of `written` when it is Pingora's own refusal of a head being read.
    fn take_over(&mut self, written: &[u8]) -> bool {
        if self.refusal.is_some() {
            return true;
        }
        if self.state.load(Ordering::Acquire) != HEAD {
            return false;
        }
        let Some(err) = pingora_refusal(written) else {
            return false;
        };
        let request_id = super::headers::new_request_id();
        let reply = super::reply::Reply::Error(err.clone());
        let status = reply.status();
        let body_len = reply.body(&request_id).map_or(0, |b| b.len());
        let out = reply.to_http1(&request_id);
        self.refusal = Some((out, 0));

        if matches!(err, EdgeError::Malformed(_)) {
            metrics().malformed.inc();
        }
        let status_label = status.to_string();
        let method = if status == 405 { "CONNECT" } else { "OTHER" };
        metrics()
            .requests
            .with_label_values(&["<none>", method, &status_label])
            .inc();
        let elapsed = (tokio::time::Instant::now() + self.timeout)
            .saturating_duration_since(self.head_deadline);
        metrics()
            .request_duration
            .with_label_values(&["<none>"])
            .observe(elapsed.as_secs_f64());
        if self.gateway.access_log.enabled() {
            let client_ip = self
                .inner
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            self.gateway.access_log.write(&Entry {
                request_id: &request_id,
                client_ip,
                host: "",
                method,
                path: "",
                protocol: "http1",
                status,
                bytes: body_len,
                duration: elapsed,
                route: None,
                upstream: None,
                server: None,
                tenant: None,
                user: None,
                error: Some(err.code()),
            });
        }
        true
    }

    /// Writes our answer; Pingora is told its `claimed` bytes were written once ours all are.
    fn poll_refusal(
        &mut self,
        cx: &mut Context<'_>,
        claimed: usize,
    ) -> Poll<std::io::Result<usize>> {
        let Some((out, pos)) = self.refusal.as_mut() else {
            return Poll::Ready(Ok(claimed));
        };
        while *pos < out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &out[*pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(claimed))
    }
}

/// The edge error for a response Pingora writes on its own: its parser's 400 and its 405 to `CONNECT`.
fn pingora_refusal(written: &[u8]) -> Option<EdgeError> {
    let status = written
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| written.strip_prefix(b"HTTP/1.0 "))?;
    match status.get(..4)? {
        b"400 " => Some(EdgeError::Malformed(
            "the request head is not valid HTTP/1.1",
        )),
        b"405 " => Some(EdgeError::ConnectNotAllowed),
        _ => None,
    }
}

fn deadline_of(stream: Option<&Stream>) -> Option<&DeadlineStream> {
    stream.and_then(|s| s.as_any().downcast_ref::<DeadlineStream>())
}

/// The request head was parsed: stop the clock.
pub fn head_done(stream: Option<&Stream>) {
    if let Some(d) = deadline_of(stream) {
        let _ = d
            .state
            .compare_exchange(HEAD, BUSY, Ordering::AcqRel, Ordering::Acquire);
        let _ = d
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The request is over: the next byte read starts the clock for the next head.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(d) = deadline_of(stream) {
        let _ = d
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let timed_out = || {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received within header_timeout",
            )))
        };
        if this.armed && this.state.load(Ordering::Acquire) == HEAD {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    return timed_out();
                }
            }
        }
        let before = buf.filled().len();
        let res = if this.replay_pos < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replay_pos);
            buf.put_slice(&this.replay[this.replay_pos..this.replay_pos + n]);
            this.replay_pos += n;
            if this.replay_pos == this.replay.len() {
                this.replay = Vec::new();
                this.replay_pos = 0;
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        if res.is_pending() && !this.armed && this.state.load(Ordering::Acquire) == HEAD {
            // The head is not all here: from now on the clock can end the wait.
            let deadline = this.head_deadline;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            sleep.as_mut().reset(deadline);
            this.armed = true;
            if sleep.as_mut().poll(cx).is_ready() {
                return timed_out();
            }
        }
        if let Poll::Ready(Ok(())) = res {
            let got = &buf.filled()[before..];
            if this.first_read && !got.is_empty() {
                this.first_read = false;
                if got.starts_with(b"PRI * HTTP/2") {
                    this.state.store(OFF, Ordering::Release);
                }
            }
            if !got.is_empty()
                && this
                    .state
                    .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // A new head starts; its timer is armed only if a read of it pends.
                this.head_deadline = tokio::time::Instant::now() + this.timeout;
                this.armed = false;
            }
        }
        res
    }
}

use std::future::Future;

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.take_over(buf) {
            return self.poll_refusal(cx, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if self.take_over(first) {
            let claimed = bufs.iter().map(|b| b.len()).sum();
            return self.poll_refusal(cx, claimed);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    /// Pingora's h2c preface peek: reads until `buf` is full or the bytes stop matching the preface,
    /// within the head deadline; the bytes are then handed out again by `poll_read`. A client that
    /// stalls gets a `TimedOut` error, which makes Pingora drop the connection.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let deadline = self.head_deadline;
        let mut got = std::mem::take(&mut self.replay);
        got.drain(..self.replay_pos);
        self.replay_pos = 0;
        let mut chunk = [0u8; 64];
        while got.len() < buf.len() && H2_PREFACE.starts_with(&got) {
            let want = (buf.len() - got.len()).min(chunk.len());
            match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk[..want])).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    self.replay = got;
                    return Err(e);
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request head within header_timeout of the accept",
                    ))
                }
            }
        }
        let n = got.len().min(buf.len());
        buf[..n].copy_from_slice(&got[..n]);
        buf[n..].fill(0);
        self.replay = got;
        Ok(true)
    }
}

/// Wraps an HTTP app so that every accepted connection gets a [`DeadlineStream`] (after its TLS
/// handshake, on the https entrypoint).
pub struct HeadDeadlineApp<A> {
    pub inner: Arc<A>,
    pub state: Arc<GatewayState>,
    /// Set on the https entrypoint: each new connection is handshaken first.
    pub tls: Option<Arc<crate::tls::accept::Terminator>>,
    /// The entrypoint's open connections (shared by its per-thread services).
    pub connections: Arc<super::connections::ConnectionLimits>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Reused keep-alive streams come back already wrapped.
        let stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            stream
        } else {
            let rt = self.state.current();
            // A balancer's PROXY protocol header first (`proxy_header`): from here on the peer is the
            // client it names.
            let stream = match &rt.config.proxy_protocol {
                Some(from) => {
                    super::proxy_header::accept(stream, from, rt.config.limits.header_timeout)
                        .await?
                }
                None => stream,
            };
            // The caps next: a connection over one is closed before any handshake or read.
            let peer = super::proxy_header::peer_ip(&stream);
            let counted =
                peer.filter(|ip| !rt.config.trusted_proxies.iter().any(|n| n.contains(ip)));
            let overload = &rt.config.overload;
            let connection = self.connections.admit(
                counted,
                overload.max_connections,
                overload.per_client_connections,
            )?;
            let stream = match &self.tls {
                Some(terminator) => {
                    let deadline = rt
                        .config
                        .tls
                        .as_ref()
                        .map_or(crate::config::tls::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
                            t.handshake_timeout
                        });
                    match terminator.accept(stream, deadline).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            return None;
                        }
                    }
                }
                None => stream,
            };
            Box::new(DeadlineStream::new(
                stream,
                rt.config.limits.header_timeout,
                Arc::clone(&self.state),
                Some(connection),
            ))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_400_and_405_are_taken_over() {
        let code = |w: &[u8]| pingora_refusal(w).map(|e| e.code());
        assert_eq!(
            code(b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n"),
            Some("malformed_request")
        );
        assert_eq!(
            code(b"HTTP/1.0 400 Bad Request\r\n"),
            Some("malformed_request")
        );
        assert_eq!(
            code(b"HTTP/1.1 405 Method Not Allowed\r\n"),
            Some("method_not_allowed")
        );
        for other in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 100 Continue\r\n",
            b"HTTP/1.1 4000",
            b"",
            b"HTTP/1.1 40",
        ] {
            assert_eq!(code(other), None, "{:?}", String::from_utf8_lossy(other));
        }
    }
}
