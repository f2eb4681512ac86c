//! The harness's upstream: a fast in-process hyper server (HTTP/1.1, and HTTP/2 with prior knowledge) answering every request with the same
//! small fixed body. It counts what it serves, and a test can make it stall for a while.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The response body: 1 KiB, as in shared/BENCHMARKS.md.
pub const BODY_LEN: usize = 1024;

/// A running upstream. It lives on its own thread (one single-threaded runtime) until the process ends
/// or `stop` is called.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    served: AtomicU64,
    started: Instant,
    /// Requests arriving before this many µs after `started` wait until then (0: no stall).
    stall_until_us: AtomicU64,
    body: Bytes,
}

/// The listen backlog: a burst of hundreds of new connections (the overload scenarios open 512 at once)
/// must wait in the accept queue, not be dropped into 1 s SYN retransmits (std's `bind` listens with
/// 128). The kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// A listening socket on `addr` with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Upstream {
    /// Binds `addr` (port 0 picks one) and serves until dropped.
    pub fn start(addr: SocketAddr) -> std::io::Result<Upstream> {
        let listener = listen(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            served: AtomicU64::new(0),
            started: Instant::now(),
            stall_until_us: AtomicU64::new(0),
            body: Bytes::from(vec![b'a'; BODY_LEN]),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept_loop(listener, st) => {}
                        _ = rx => {}
                    }
                })
            })?;
        Ok(Upstream {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Every request arriving in the next `d` waits until `d` has passed.
    pub fn stall_for(&self, d: Duration) {
        let until = self.state.started.elapsed() + d;
        self.state
            .stall_until_us
            .store(until.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = Arc::clone(&state);
                async move {
                    // Read the request body (a login's JSON, say) before answering.
                    let _ = req.into_body().collect().await;
                    let stall = state.stall_until_us.load(Ordering::Relaxed);
                    if stall > 0 {
                        let until = state.started + Duration::from_micros(stall);
                        tokio::time::sleep_until(until.into()).await;
                    }
                    state.served.fetch_add(1, Ordering::Relaxed);
                    let mut resp = http::Response::new(Full::new(state.body.clone()));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #25 point 6: 600 connections opened at once all complete their handshake while nobody accepts
    /// (with std's backlog of 128, those past it hang in SYN retransmits and time out here).
    #[test]
    fn a_burst_of_new_connections_fits_the_backlog() {
        let l = listen("127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = l.local_addr().expect("addr");
        let conns: Vec<std::net::TcpStream> = (0..600)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect();
        assert_eq!(conns.len(), 600);
    }
}
