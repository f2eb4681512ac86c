//! The harness's upstream: a fast in-process hyper server (HTTP/1.1, and HTTP/2 with prior knowledge) answering every request with the same
//! small fixed body. It counts what it serves, and a test can make it stall for a while. With a
//! [`Capacity`], it stands for a slow backend: at most `concurrency` requests are worked on at once, each
//! for `service`, and the rest wait their turn inside it (the overload benchmarks' bottleneck upstream).

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

/// A backend with a fixed capacity: `concurrency` ÷ `service` requests per second.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub concurrency: usize,
    pub service: Duration,
}

struct State {
    served: AtomicU64,
    /// Some: the capacity's workers and how long each request keeps one.
    workers: Option<(tokio::sync::Semaphore, Duration)>,
    started: Instant,
    /// Requests arriving before this many µs after `started` wait until then (0: no stall).
    stall_until_us: AtomicU64,
    body: Bytes,
    /// The `compressed` scenario's answer.
    json: Bytes,
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
        Self::start_with(addr, None)
    }

    /// As `start`, answering at most `capacity` (None: as fast as it can).
    pub fn start_with(addr: SocketAddr, capacity: Option<Capacity>) -> std::io::Result<Upstream> {
        let listener = listen(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            served: AtomicU64::new(0),
            workers: capacity
                .map(|c| (tokio::sync::Semaphore::new(c.concurrency.max(1)), c.service)),
            started: Instant::now(),
            stall_until_us: AtomicU64::new(0),
            body: Bytes::from(vec![b'a'; BODY_LEN]),
            json: Bytes::from(crate::scenario::json_body()),
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

/// A tenant's policy as the backend's internal listener answers it: a plan whose rate never trips.
fn policy_response(tenant: &str) -> http::Response<Full<Bytes>> {
    let body = serde_json::json!({
        "tenant": tenant, "plan": "bench", "version": 1, "suspended": false,
        "requests_per_second": crate::scenario::LIMIT_PER_SECOND, "burst": 0, "concurrency_weight": 1,
        "monthly_requests": 0, "storage_bytes": 0, "max_upload_bytes": 0, "max_api_keys": 0,
        "max_users": 0
    });
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
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
                    // The `tenant_jwt_plan` scenario's policy lookups: a plan that never trips.
                    if let Some(t) = req.uri().path().strip_prefix(crate::scenario::POLICY_PATH) {
                        return Ok(policy_response(t));
                    }
                    let path_is_json = req.uri().path() == crate::scenario::JSON_PATH;
                    // Read the request body (a login's JSON, say) before answering.
                    let _ = req.into_body().collect().await;
                    let stall = state.stall_until_us.load(Ordering::Relaxed);
                    if stall > 0 {
                        let until = state.started + Duration::from_micros(stall);
                        tokio::time::sleep_until(until.into()).await;
                    }
                    if let Some((workers, service)) = &state.workers {
                        // Closed only when the upstream stops; then answer at once.
                        let _worker = workers.acquire().await;
                        tokio::time::sleep(*service).await;
                    }
                    state.served.fetch_add(1, Ordering::Relaxed);
                    // The `compressed` scenario's API JSON.
                    if path_is_json {
                        let mut resp = http::Response::new(Full::new(state.json.clone()));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        return Ok(resp);
                    }
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

    /// A capacity of 2 workers × 50 ms serves 8 simultaneous requests in four turns: no faster than
    /// 200 ms (a lower bound only: a loaded machine may be slower, never faster).
    #[test]
    fn a_capacity_makes_requests_take_turns() {
        use std::io::{Read, Write};
        let up = Upstream::start_with(
            "127.0.0.1:0".parse().expect("addr"),
            Some(Capacity {
                concurrency: 2,
                service: Duration::from_millis(50),
            }),
        )
        .expect("start");
        let addr = up.addr;
        let t0 = Instant::now();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).expect("connect");
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .expect("write");
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).expect("read");
                    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(up.served(), 8);
    }
}
