//! The load generator: N connections in a closed loop (each as fast as it can) or an open loop (a fixed
//! request rate, every latency measured from the request's intended send time, so a stall of the target
//! shows in the histogram instead of slowing the generator down with it).
//!
//! Threads: each runs one single-threaded tokio runtime driving its share of the connections; their
//! figures are merged at the end. Requests rotate over a list of prepared requests, each with its own
//! Host (and SNI), so tenant subdomains need no DNS.

pub mod h1;
mod h2;
mod h3;
pub use h3::client_config as h3_client_config;
pub mod stats;
mod stream;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::Method;
use serde::Serialize;

pub use stats::{Failure, Stats, Summary};
use stream::Stream;

/// One request the generator sends, before it is prepared for the wire.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    /// The Host header (HTTP/1.1), `:authority` (HTTP/2) and the TLS server name.
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RequestSpec {
    pub fn get(host: impl Into<String>, path: impl Into<String>) -> Self {
        RequestSpec {
            method: Method::GET,
            host: host.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 (over TLS with ALPN `h2`, or prior knowledge over plain TCP).
    H2,
    /// HTTP/3 (QUIC, always TLS): the address is UDP (usually the https port).
    H3,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "loop")]
pub enum Load {
    /// Each connection sends its next request as soon as the last one is answered.
    Closed,
    /// `rate` requests per second in all, spread over the connections.
    Open { rate: f64 },
}

/// What to run.
#[derive(Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// Some: HTTPS with this client configuration (its ALPN is set from `protocol`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub protocol: Protocol,
    /// Keep connections alive (true), or open a new connection for every request (false).
    pub keep_alive: bool,
    pub load: Load,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    /// A request without a whole response after this long fails as a timeout (its connection is dropped).
    pub timeout: Duration,
    pub requests: Vec<RequestSpec>,
}

impl Plan {
    /// Plain HTTP/1.1 over keep-alive connections from one thread, 10 s per request at most.
    pub fn h1(
        addr: SocketAddr,
        requests: Vec<RequestSpec>,
        load: Load,
        connections: usize,
        duration: Duration,
    ) -> Plan {
        Plan {
            addr,
            tls: None,
            protocol: Protocol::H1,
            keep_alive: true,
            load,
            connections,
            threads: 1,
            duration,
            timeout: Duration::from_secs(10),
            requests,
        }
    }
}

/// A run's result: the merged figures and, for an open loop, how many intended requests were never sent.
pub struct Outcome {
    pub stats: Stats,
    /// The measured window (the plan's duration); requests in flight at its end finish after it.
    pub elapsed: Duration,
    /// Open loop: the requests the schedule asked for (rate × duration).
    pub intended: Option<u64>,
}

impl Outcome {
    pub fn summary(&self) -> Report {
        let summary = self.stats.summary(self.elapsed.as_secs_f64());
        let missed = self.intended.map(|i| i.saturating_sub(summary.requests));
        Report {
            summary,
            intended: self.intended,
            missed,
        }
    }
}

/// `--json`: the summary plus the open loop's schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intended: Option<u64>,
    /// Open loop: intended requests never sent (the target could not keep up within the timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no requests to send")]
    NoRequests,
    #[error("connections and threads must be at least 1")]
    Zero,
    #[error("the open loop's rate must be a positive number, not {0}")]
    Rate(f64),
    #[error("request {0:?}: {1}")]
    Request(String, String),
    #[error("could not start a generator thread: {0}")]
    Thread(std::io::Error),
    #[error("HTTP/3 needs TLS (a client configuration): {0}")]
    Quic(String),
}

/// Progress shared with whoever draws it: requests finished so far.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
}

/// A request ready for the wire, in every form a connection may need.
struct Prepared {
    h1_keep_alive: Bytes,
    h1_close: Bytes,
    head_only: bool,
    server_name: rustls::pki_types::ServerName<'static>,
    h2: http::Request<()>,
    /// The same request with scheme `https` (HTTP/3 has no other).
    h3: http::Request<()>,
    server_host: String,
    body: Bytes,
}

fn prepare(spec: &RequestSpec) -> Result<Prepared, PlanError> {
    let bad = |m: String| PlanError::Request(format!("{} {}", spec.host, spec.path), m);
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        spec.method, spec.path, spec.host
    );
    let mut h2 = http::Request::builder()
        .method(spec.method.clone())
        .uri(format!("http://{}{}", spec.host, spec.path));
    let mut h3 = http::Request::builder()
        .method(spec.method.clone())
        .uri(format!("https://{}{}", spec.host, spec.path));
    for (name, value) in &spec.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
        h2 = h2.header(name.as_str(), value.as_str());
        h3 = h3.header(name.as_str(), value.as_str());
    }
    if !spec.body.is_empty() || spec.method == Method::POST || spec.method == Method::PUT {
        head.push_str(&format!("Content-Length: {}\r\n", spec.body.len()));
    }
    let finish = |extra: &str| {
        let mut v = Vec::with_capacity(head.len() + extra.len() + 2 + spec.body.len());
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(extra.as_bytes());
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(&spec.body);
        Bytes::from(v)
    };
    let server_name = rustls::pki_types::ServerName::try_from(spec.host.clone())
        .map_err(|e| bad(format!("not a TLS server name: {e}")))?;
    Ok(Prepared {
        h1_keep_alive: finish(""),
        h1_close: finish("Connection: close\r\n"),
        head_only: spec.method == Method::HEAD,
        server_name,
        h2: h2.body(()).map_err(|e| bad(e.to_string()))?,
        h3: h3.body(()).map_err(|e| bad(e.to_string()))?,
        server_host: spec.host.clone(),
        body: spec.body.clone(),
    })
}

/// State every thread of a run shares.
struct Shared {
    plan: Plan,
    requests: Vec<Prepared>,
    tls: Option<tokio_rustls::TlsConnector>,
    /// HTTP/3: the QUIC client configuration.
    quic: Option<quinn::ClientConfig>,
    start: Instant,
    /// Open loop: the next slot of the schedule.
    next_slot: AtomicU64,
    /// Open loop: set once the schedule is over (or abandoned); every worker stops.
    stop: AtomicBool,
    progress: Arc<Progress>,
}

impl Shared {
    /// The intended start of this worker's next request, after waiting for it; None when the run is over.
    async fn next_request(&self) -> Option<Instant> {
        let end = self.start + self.plan.duration;
        match self.plan.load {
            Load::Closed => {
                let now = Instant::now();
                (now < end).then_some(now)
            }
            Load::Open { rate } => {
                if self.stop.load(Ordering::Relaxed) {
                    return None;
                }
                let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
                let at = self.start + Duration::from_secs_f64(slot as f64 / rate);
                if at >= end {
                    return None;
                }
                // Far behind the schedule (the target stalls for longer than a timeout past the end):
                // give up on the rest, which the report counts as missed.
                if Instant::now() > end + self.plan.timeout {
                    self.stop.store(true, Ordering::Relaxed);
                    return None;
                }
                tokio::time::sleep_until(at.into()).await;
                Some(at)
            }
        }
    }
}

/// Runs `plan` to its end on `plan.threads` threads. Blocks the calling thread.
pub fn run(plan: Plan, progress: Arc<Progress>) -> Result<Outcome, PlanError> {
    if plan.requests.is_empty() {
        return Err(PlanError::NoRequests);
    }
    if plan.connections == 0 || plan.threads == 0 {
        return Err(PlanError::Zero);
    }
    if let Load::Open { rate } = plan.load {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(PlanError::Rate(rate));
        }
    }
    let requests = plan
        .requests
        .iter()
        .map(prepare)
        .collect::<Result<Vec<_>, _>>()?;
    let tls = plan.tls.as_ref().map(|config| {
        let mut config = (**config).clone();
        config.alpn_protocols = match plan.protocol {
            Protocol::H1 => vec![b"http/1.1".to_vec()],
            Protocol::H2 => vec![b"h2".to_vec()],
            Protocol::H3 => vec![b"h3".to_vec()],
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    });
    let quic = match (plan.protocol, plan.tls.as_ref()) {
        (Protocol::H3, Some(config)) => Some(h3::client_config(config).map_err(PlanError::Quic)?),
        (Protocol::H3, None) => return Err(PlanError::Quic("no TLS configuration".into())),
        _ => None,
    };
    let intended = match plan.load {
        Load::Open { rate } => Some((rate * plan.duration.as_secs_f64()).ceil() as u64),
        Load::Closed => None,
    };
    let threads = plan.threads.min(plan.connections);
    let shared = Arc::new(Shared {
        plan,
        requests,
        tls,
        quic,
        start: Instant::now(),
        next_slot: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress,
    });
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || thread_main(&shared, t, threads))
            .map_err(PlanError::Thread)?;
        handles.push(handle);
    }
    let mut stats = Stats::new();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => stats.merge(&s),
            Ok(Err(e)) => return Err(PlanError::Thread(e)),
            Err(_) => {
                return Err(PlanError::Thread(std::io::Error::other(
                    "a generator thread panicked",
                )))
            }
        }
    }
    Ok(Outcome {
        stats,
        elapsed: shared.plan.duration,
        intended,
    })
}

fn thread_main(shared: &Shared, thread: usize, threads: usize) -> std::io::Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stats = RefCell::new(Stats::new());
    rt.block_on(async {
        let mut workers = FuturesUnordered::new();
        for id in (thread..shared.plan.connections).step_by(threads) {
            workers.push(worker(shared, id, &stats));
        }
        while workers.next().await.is_some() {}
    });
    Ok(stats.into_inner())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One connection's loop: requests until the run is over, reconnecting whenever the connection is gone.
async fn worker(shared: &Shared, id: usize, stats: &RefCell<Stats>) {
    let plan = &shared.plan;
    let n = shared.requests.len();
    // A kept-alive TLS connection stays on one server name (its SNI); otherwise requests rotate.
    let sticky = shared.tls.is_some() && plan.keep_alive;
    let mut next = id % n;
    let end = shared.start + plan.duration;
    let mut watchdog = std::pin::pin!(tokio::time::sleep(plan.timeout));
    let mut h1: Option<h1::Conn<Stream>> = None;
    let mut h2: Option<h2::Conn> = None;
    let mut h3: Option<h3::Conn> = None;
    while let Some(intended) = shared.next_request().await {
        let req = &shared.requests[next];
        if !sticky {
            next = (next + plan.connections) % n;
        }
        let started = Instant::now();
        let result = {
            let exchange = async {
                match plan.protocol {
                    Protocol::H1 => {
                        if h1.is_none() {
                            h1 = Some(h1::Conn::new(connect(shared, req).await?));
                        }
                        let conn = h1.as_mut().ok_or(Failure::Io)?;
                        let bytes = if plan.keep_alive {
                            &req.h1_keep_alive
                        } else {
                            &req.h1_close
                        };
                        let resp = conn.exchange(bytes, req.head_only).await;
                        match resp {
                            Ok(r) if r.close || !plan.keep_alive => h1 = None,
                            Err(_) => h1 = None,
                            Ok(_) => {}
                        }
                        resp.map(|r| r.status)
                    }
                    Protocol::H2 => {
                        if h2.is_none() {
                            h2 = Some(h2::Conn::handshake(connect(shared, req).await?).await?);
                        }
                        let conn = h2.as_mut().ok_or(Failure::Io)?;
                        let resp = conn.exchange(&req.h2, &req.body).await;
                        if resp.is_err() || !plan.keep_alive {
                            h2 = None;
                        }
                        resp
                    }
                    Protocol::H3 => {
                        if h3.is_none() {
                            let config = shared.quic.as_ref().ok_or(Failure::Connect)?;
                            h3 =
                                Some(h3::Conn::connect(plan.addr, &req.server_host, config).await?);
                        }
                        let conn = h3.as_mut().ok_or(Failure::Io)?;
                        let resp = conn.exchange(&req.h3, &req.body).await;
                        if resp.is_err() || !plan.keep_alive {
                            h3 = None;
                        }
                        resp
                    }
                }
            };
            tokio::pin!(exchange);
            // The request timeout without a timer per request: the connection's watchdog fires at most once
            // per timeout period, and is only re-armed then (a request may fail up to one period late).
            loop {
                tokio::select! {
                    biased;
                    r = &mut exchange => break Ok(r),
                    () = &mut watchdog => {
                        let due = started + plan.timeout;
                        if Instant::now() >= due {
                            break Err(());
                        }
                        watchdog.as_mut().reset(due.into());
                    }
                }
            }
        };
        if result.is_err() {
            watchdog
                .as_mut()
                .reset((Instant::now() + plan.timeout).into());
        }
        let done = Instant::now();
        let latency = micros(done.saturating_duration_since(intended));
        match result {
            Ok(Ok(status)) => {
                let mut stats = stats.borrow_mut();
                stats.response(status, latency);
                if done > end {
                    stats.late(status);
                }
            }
            Ok(Err(kind)) => stats.borrow_mut().failure(kind, latency),
            Err(_) => {
                h1 = None;
                h2 = None;
                h3 = None;
                stats.borrow_mut().failure(Failure::Timeout, latency);
            }
        }
        shared.progress.done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn connect(shared: &Shared, req: &Prepared) -> Result<Stream, Failure> {
    let tcp = tokio::net::TcpStream::connect(shared.plan.addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &shared.tls {
        None => Ok(Stream::Tcp(tcp)),
        Some(tls) => {
            let tls = tls
                .connect(req.server_name.clone(), tcp)
                .await
                .map_err(|_| Failure::Connect)?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}
