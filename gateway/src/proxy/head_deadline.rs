//! Slow-client protection: the whole request head must arrive within `limits.header_timeout` of its
//! first byte.
//!
//! Pingora's per-read timeout restarts on every read, so a client trickling one header line every few
//! seconds (slowloris) would hold a connection forever. [`HeadDeadlineApp`] wraps each accepted stream
//! in a [`DeadlineStream`] whose clock starts with the first byte of a request head; the proxy stops it
//! once the head is parsed ([`head_done`]) and re-arms it when the request ends ([`request_done`]).
//! HTTP/2 connections (h2c preface) are left to h2's own flow control and timeouts.

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

use crate::state::GatewayState;

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const OFF: u8 = 3;

/// A downstream stream with a deadline on request heads.
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    state: AtomicU8,
    sleep: Option<Pin<Box<Sleep>>>,
    first_read: bool,
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
    fn new(inner: Stream, timeout: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            timeout,
            state: AtomicU8::new(IDLE),
            sleep: None,
            first_read: true,
        }
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
        if this.state.load(Ordering::Acquire) == HEAD {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received within header_timeout",
                    )));
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
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
                let mut sleep = Box::pin(tokio::time::sleep(this.timeout));
                // Register the timer with this task now, so a client that goes silent is still woken up.
                let _ = sleep.as_mut().poll(cx);
                this.sleep = Some(sleep);
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
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Wraps an HTTP app so that every accepted connection gets a [`DeadlineStream`] (after its TLS
/// handshake, on the https entrypoint).
pub struct HeadDeadlineApp<A> {
    pub inner: Arc<A>,
    pub state: Arc<GatewayState>,
    /// Set on the https entrypoint: each new connection is handshaken first.
    pub tls: Option<Arc<crate::tls::accept::Terminator>>,
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
            Box::new(DeadlineStream::new(stream, rt.config.limits.header_timeout))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
