//! Test upstreams (hyper), a gateway process per test, and small HTTP clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous deadline for conditions on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `f` holds, polling; panics with `what` after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An HS256 access token shaped as the backend mints it (claim names from `contracts::claims`), valid
/// for ten minutes from now; each setter changes one claim or the header's `kid`.
pub struct Token {
    secret: String,
    kid: Option<String>,
    claims: serde_json::Value,
}

impl Token {
    /// A token of tenant `tenant`, signed with `secret`.
    pub fn new(secret: &str, tenant: &str) -> Token {
        use contracts::claims::{EMAIL, JTI, ROLE, TENANT_ID, USER_ID};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = serde_json::Map::new();
        claims.insert(
            USER_ID.into(),
            "8c3c6a8e-0000-4000-8000-000000000001".into(),
        );
        claims.insert(EMAIL.into(), "ann@acme.test".into());
        claims.insert(TENANT_ID.into(), tenant.into());
        claims.insert(ROLE.into(), "admin".into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 600).into());
        claims.insert(JTI.into(), format!("t-{}", fastrand::u64(..)).into());
        Token {
            secret: secret.to_string(),
            kid: None,
            claims: claims.into(),
        }
    }

    pub fn user(self, id: &str) -> Token {
        self.claim(contracts::claims::USER_ID, id.into())
    }

    pub fn jti(self, jti: &str) -> Token {
        self.claim(contracts::claims::JTI, jti.into())
    }

    pub fn kid(mut self, kid: &str) -> Token {
        self.kid = Some(kid.to_string());
        self
    }

    /// Sets (or, with `Value::Null`, removes) one claim.
    pub fn claim(mut self, name: &str, value: serde_json::Value) -> Token {
        if let Some(map) = self.claims.as_object_mut() {
            if value.is_null() {
                map.remove(name);
            } else {
                map.insert(name.to_string(), value);
            }
        }
        self
    }

    /// The compact JWT.
    pub fn sign(&self) -> String {
        use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
        let mut header = Header::new(Algorithm::HS256);
        header.kid = self.kid.clone();
        encode(
            &header,
            &self.claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("sign")
    }

    /// `Bearer <jwt>`, as an `Authorization` value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.sign())
    }
}

/// A port that was free a moment ago (for listeners we do not create ourselves), never the same twice
/// in this test process: Pingora binds with SO_REUSEPORT, so two gateways handed one port would both
/// listen on it and share its connections (a TLS client then meets another test's plain listener).
///
/// Taken below the kernel's ephemeral range, so that no outgoing connection is ever given it as its
/// own port: a gateway restarted on its ports once found one held by another test's kept-alive
/// connection, which took it in the moment between the old process's exit and the new one's bind, and
/// Pingora gave up after 30 s of `AddrInUse` (a CI failure).
pub fn free_port() -> u16 {
    free_port_with(0)
}

/// Like [`free_port`], a port whose `port + offset` is free and below the ephemeral range too; both
/// are handed out. A Redis cluster node listens on its port and on port + 10 000 (its bus): from
/// `free_port` alone the bus port could fall in the ephemeral range, on a port an outgoing connection
/// holds, and the node exit at start ("cluster node answers" timed out in a CI run).
pub fn free_port_with(offset: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = below_ephemeral_range();
    let span = u32::from(high - low)
        .saturating_sub(u32::from(offset))
        .max(1);
    // Spread over the range by process, so that a run after a killed one does not start where it did.
    let start = std::process::id().wrapping_mul(7919) % span;
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    // Free for TCP and UDP alike (HTTP/3 listens on the HTTPS port's number over UDP).
    let free = |port: u16| {
        !handed.contains(&port)
            && StdListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
    };
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        let pair = port.checked_add(offset).filter(|p| *p < high);
        if let Some(pair) = pair {
            if free(port) && (offset == 0 || free(pair)) {
                handed.insert(port);
                handed.insert(pair);
                return port;
            }
        }
    }
    panic!("no free port (and port + {offset}) left in {low}..{high}");
}

/// Ports no outgoing connection is given: the 12 000 below `ip_local_port_range`'s first (above 1024).
fn below_ephemeral_range() -> (u16, u16) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = first.max(2048);
    (high.saturating_sub(12_000).max(1025), high)
}

/// A loopback port where nothing listens, held for as long as the value lives: bound but not
/// listening, so connections to it are refused, and no other test's listener can be given it. A port
/// from [`free_port`] used as a dead address could be: the Sentry test's receiver once got the dead
/// policy-lookup port of a plans test, and that gateway's lookups among its envelopes (a CI failure).
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    DeadPort {
        _socket: socket,
        port,
    }
}

/// What a test upstream does.
#[derive(Default)]
pub struct Behaviour {
    pub delay_ms: AtomicU64,
    /// The status of every answer but health checks (0: 200).
    pub status: AtomicU64,
    pub health_status: AtomicU64,
    /// How long `/healthz` takes to answer.
    pub health_delay_ms: AtomicU64,
    /// Health probes answered with a failure / with 200.
    pub probes_failed: AtomicUsize,
    pub probes_ok: AtomicUsize,
}

/// What a test upstream saw, head by head, before any body arrived.
#[derive(Default)]
pub struct Seen {
    /// Request heads received (a request counts here even if its body never arrives whole).
    pub heads: AtomicUsize,
    /// Requests whose body ended early or malformed: the edge aborted them.
    pub aborted: AtomicUsize,
    /// `(connection number, method, path)` of every head, in arrival order.
    pub log: std::sync::Mutex<Vec<(u64, String, String)>>,
    connections: AtomicU64,
    /// Requests being answered now, and the most at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Seen {
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    pub fn aborted(&self) -> usize {
        self.aborted.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<(u64, String, String)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A real HTTP/1.1 + h2c upstream that echoes the request as JSON and counts hits.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub behaviour: Arc<Behaviour>,
    pub seen: Arc<Seen>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestUpstream {
    /// Starts on a fresh port (from [`free_port`]: [`TestUpstream::restart`] binds it again).
    pub fn start(name: &str) -> TestUpstream {
        Self::start_on(
            name,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Behaviour::default()),
            Arc::new(Seen::default()),
        )
    }

    /// Starts on `addr` (another loopback address, say, to stand for another host).
    pub fn start_at(name: &str, addr: SocketAddr) -> TestUpstream {
        Self::start_on(
            name,
            addr,
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Behaviour::default()),
            Arc::new(Seen::default()),
        )
    }

    fn start_on(
        name: &str,
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
        behaviour: Arc<Behaviour>,
        seen: Arc<Seen>,
    ) -> TestUpstream {
        let listener = bind_retry(addr);
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (h, b, n, sn) = (
            hits.clone(),
            behaviour.clone(),
            name.to_string(),
            seen.clone(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let stopped = async move {
                    loop {
                        if stop_rx.try_recv().is_ok() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (h, b, n, sn) = (h.clone(), b.clone(), n.clone(), sn.clone());
                            let conn = sn.connections.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| handle(req, n.clone(), h.clone(), b.clone(), sn.clone(), conn));
                                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime here cancels every connection task: the server is truly gone.
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            hits,
            behaviour,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Kills the server: listener and every open connection.
    pub fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts it again on the same address.
    pub fn restart(&mut self) {
        self.kill();
        let again = Self::start_on(
            &self.name,
            self.addr,
            self.hits.clone(),
            self.behaviour.clone(),
            self.seen.clone(),
        );
        *self = again;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bind_retry(addr: SocketAddr) -> StdListener {
    let start = Instant::now();
    loop {
        match StdListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if start.elapsed() > DEADLINE => panic!("cannot bind {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    name: String,
    hits: Arc<AtomicUsize>,
    behaviour: Arc<Behaviour>,
    seen: Arc<Seen>,
    conn: u64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        let delay = behaviour.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let code = match behaviour.health_status.load(Ordering::SeqCst) {
            0 => 200,
            c => c as u16,
        };
        if code == 200 {
            behaviour.probes_ok.fetch_add(1, Ordering::SeqCst);
        } else {
            behaviour.probes_failed.fetch_add(1, Ordering::SeqCst);
        }
        return Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::from_static(b"ok")))
            .expect("response"));
    }
    seen.heads.fetch_add(1, Ordering::SeqCst);
    seen.log.lock().unwrap_or_else(|p| p.into_inner()).push((
        conn,
        req.method().as_str().to_string(),
        req.uri().path().to_string(),
    ));
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        hits.fetch_add(1, Ordering::SeqCst);
        return Ok(websocket_echo(req, &name));
    }
    let (parts, body) = req.into_parts();
    // A request counts as having reached this backend only once it arrived whole: a request whose
    // body the edge aborted never becomes something a backend could act on.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        seen.aborted.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .expect("response"));
    };
    hits.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = serde_json::json!({
        "server": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let status = match behaviour.status.load(Ordering::SeqCst) {
        0 => 200,
        s => s as u16,
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name.as_str())
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("response"))
}

fn websocket_echo(mut req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let upgrade = hyper::upgrade::on(&mut req);
    let name = name.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                let reply = match msg {
                    tokio_tungstenite::tungstenite::Message::Text(t) => {
                        tokio_tungstenite::tungstenite::Message::text(format!("{name}:{t}"))
                    }
                    other => other,
                };
                if ws.send(reply).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .expect("response")
}

/// A running gateway process with its own config file, killed on drop.
pub struct Gateway {
    pub http: u16,
    /// The https entrypoint, listed in the config when the body has a `[tls]` section.
    pub https: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Child,
}

impl Gateway {
    /// Writes `body` (the config without `[entrypoints]`) and starts the gateway on fresh ports.
    pub async fn start(body: &str) -> Gateway {
        Self::start_with_env(body, &[]).await
    }

    /// Like [`Gateway::start`], with extra environment variables for the process.
    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        let ports = (free_port(), free_port(), free_port());
        Self::start_on(ports, tempfile::tempdir().expect("tempdir"), body, env).await
    }

    /// Starts on the given `(http, https, admin)` ports in `dir` (a restart keeps both).
    pub async fn start_on(
        (http, https, admin): (u16, u16, u16),
        dir: tempfile::TempDir,
        body: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, Self::render(http, https, admin, body)).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .spawn()
            .expect("spawn gateway");
        let mut gw = Gateway {
            http,
            https,
            admin,
            dir,
            config,
            child,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited at start ({status}):\n{}", gw.stderr());
            }
            if TcpStream::connect(("127.0.0.1", gw.http)).await.is_ok()
                && raw(
                    gw.admin,
                    &format!(
                        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                        gw.admin
                    ),
                )
                .await
                .starts_with("HTTP/1.1 200")
            {
                return gw;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "gateway did not start listening:\n{}",
                gw.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn render(http: u16, https: u16, admin: u16, body: &str) -> String {
        let https = if body.contains("[tls") {
            // With an `[h3]` section, HTTP/3 on the https port's number (UDP), as deployments do.
            let h3 = if body.contains("[h3]") {
                format!("h3 = \"127.0.0.1:{https}\"\n")
            } else {
                String::new()
            };
            format!("https = \"127.0.0.1:{https}\"\n{h3}")
        } else {
            String::new()
        };
        format!("[entrypoints]\nhttp = \"127.0.0.1:{http}\"\n{https}admin = \"127.0.0.1:{admin}\"\n\n[log]\nformat = \"json\"\n\n{body}")
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Sends `signal` (`QUIT`, `HUP`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts `gateway run --upgrade` on a copy of this gateway's config, with its own log folder: the
    /// new process waits for this one's listening sockets (sent when this one gets SIGQUIT).
    pub fn successor(&self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.toml");
        std::fs::copy(&self.config, &config).expect("copy config");
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "--upgrade", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .spawn()
            .expect("spawn gateway --upgrade");
        Gateway {
            http: self.http,
            https: self.https,
            admin: self.admin,
            dir,
            config,
            child,
        }
    }

    /// The process's exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the process and hands back its directory and ports, for a restart with [`Gateway::start_on`].
    pub fn stop(mut self) -> ((u16, u16, u16), tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ports = (self.http, self.https, self.admin);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (ports, dir)
    }

    /// Replaces the config body (entrypoints kept) atomically, as ops tools do with rename.
    pub fn rewrite(&self, body: &str) {
        let tmp = self.dir.path().join("gateway.toml.tmp");
        std::fs::write(&tmp, Self::render(self.http, self.https, self.admin, body)).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    /// GET on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = raw(
            self.admin,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.admin
            ),
        )
        .await;
        split_response(&resp)
    }

    /// The value of a metric series (exact name with labels, as exposed). A series that is not there
    /// fails the test, naming the series of that metric that are: a misspelled name or label never
    /// reads as 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        match series_value(&body, series) {
            Some(v) => v,
            None => {
                let name = series.split('{').next().unwrap_or(series);
                let known: Vec<&str> = body.lines().filter(|l| l.starts_with(name)).collect();
                panic!("no metric series `{series}`; series of `{name}`: {known:#?}")
            }
        }
    }

    /// The value of a metric series if it is exposed yet: for waiting on a series that appears later
    /// (the per-tenant figures are published on their own schedule). [`Self::metric`] for the rest.
    pub async fn metric_once_there(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        series_value(&body, series)
    }

    /// The access-log lines so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends a GET through the gateway.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.request("GET", host, path, &[], Bytes::new()).await
    }

    /// Sends a GET with these headers through the gateway.
    pub async fn get_with(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", host, path, headers, Bytes::new()).await
    }

    /// Sends one request over a fresh HTTP/1.1 connection.
    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        send(self.http, method, host, path, headers, body).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` (exact name with labels) in a Prometheus exposition.
fn series_value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Which test upstream answered.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }
    /// The error code of an edge error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One HTTP/1.1 request over a fresh connection (hyper client).
pub async fn send(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect gateway");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("send request");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Writes raw bytes and reads until the peer closes (or 5 s pass); returns what was read.
pub async fn raw(port: u16, request: &str) -> String {
    raw_bytes(port, request.as_bytes()).await.0
}

/// Writes raw bytes; returns what was read and whether the peer closed the connection.
pub async fn raw_bytes(port: u16, request: &[u8]) -> (String, bool) {
    raw_bytes_from([127, 0, 0, 1], port, request).await
}

/// Like [`raw_bytes`], from the loopback address `source` (127.x.y.z: a second client or a balancer).
pub async fn raw_bytes_from(source: [u8; 4], port: u16, request: &[u8]) -> (String, bool) {
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
    };
    let Ok(mut s) = connect.await else {
        return (String::new(), true);
    };
    if s.write_all(request).await.is_err() {
        return (String::new(), true);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// (status, body) of a raw HTTP/1.1 response.
pub fn split_response(resp: &str) -> (u16, String) {
    let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `[[upstreams]]` TOML for a set of test upstreams.
pub fn upstream_toml(name: &str, servers: &[&TestUpstream], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One HTTP/1.1 keep-alive connection reused for many requests.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect gateway");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    /// The status, or `None` when the connection failed.
    pub async fn get(&mut self, host: &str, path: &str) -> Option<u16> {
        self.get_with(host, path, &[]).await
    }

    /// As `get`, with these headers.
    pub async fn get_with(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<u16> {
        self.sender.ready().await.ok()?;
        let mut req = Request::builder().uri(path).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).ok()?;
        let resp = self.sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    }
}

/// A small HTTP server answering fixed documents by path (a JWKS endpoint, the backend's API-key lookup),
/// changeable while it runs; unknown paths get 404. Counts the requests it answers.
pub struct DocServer {
    pub addr: SocketAddr,
    pub docs: Arc<std::sync::Mutex<HashMap<String, Doc>>>,
    pub hits: Arc<AtomicUsize>,
    /// Milliseconds to wait before each answer (a slow backend).
    pub delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// A document a [`DocServer`] answers: status, extra header fields, body.
pub type Doc = (u16, Vec<(String, String)>, String);

impl DocServer {
    pub async fn start() -> DocServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let docs: Arc<std::sync::Mutex<HashMap<String, Doc>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (d, h, w) = (docs.clone(), hits.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (d, h, w) = (d.clone(), h.clone(), w.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (d, h, w) = (d.clone(), h.clone(), w.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let wait = w.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            let (status, fields, body) = d
                                .lock()
                                .expect("docs")
                                .get(req.uri().path())
                                .cloned()
                                .unwrap_or((404, Vec::new(), "{}".into()));
                            let mut resp = Response::builder().status(status);
                            if !fields.iter().any(|(k, _)| k == "content-type") {
                                resp = resp.header("content-type", "application/json");
                            }
                            for (k, v) in &fields {
                                resp = resp.header(k.as_str(), v.as_str());
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from(body))).expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        DocServer {
            addr,
            docs,
            hits,
            delay_ms,
            task,
        }
    }

    pub fn set(&self, path: &str, status: u16, body: &str) {
        self.set_with(path, status, &[], body);
    }

    /// Like [`DocServer::set`], with these header fields (a `content-type` among them replaces JSON's).
    pub fn set_with(&self, path: &str, status: u16, fields: &[(&str, &str)], body: &str) {
        let fields = fields
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        self.docs
            .lock()
            .expect("docs")
            .insert(path.to_string(), (status, fields, body.to_string()));
    }

    pub fn remove(&self, path: &str) {
        self.docs.lock().expect("docs").remove(path);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for DocServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Redis the tests use (started by `scripts/test.sh`).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A private `redis-server` on a fresh port (password required, optionally TLS only), for tests that stop
/// and start Redis.
pub struct RedisServer {
    pub port: u16,
    pub password: String,
    /// With TLS: the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (installed by scripts/test.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            password: format!("pw{}", fastrand::u64(..)),
            ca: None,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.restart().await;
        r
    }

    /// A server that speaks TLS only, with a certificate from a throw-away CA.
    pub async fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=aggios-test-ca",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let mut r = RedisServer {
            port: free_port(),
            password: format!("pw{}", fastrand::u64(..)),
            ca: Some(d.join("ca.pem")),
            child: None,
            dir,
        };
        r.restart().await;
        r
    }

    /// The server's working directory, where its `dump.rdb` goes.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://:password@127.0.0.1:port` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://:{}@127.0.0.1:{}", self.password, self.port)
    }

    fn client(&self) -> redis::Client {
        // The workspace build may enable two rustls providers; pick the one the gateway uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match &self.ca {
            None => redis::Client::open(self.url()).expect("url"),
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).expect("ca")),
                },
            )
            .expect("tls client"),
        }
    }

    /// A connection for the test itself.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", &self.password]);
        let port = self.port.to_string();
        match &self.ca {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(_) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .args([
                        "--tls-cert-file",
                        "server.pem",
                        "--tls-key-file",
                        "server.key",
                    ])
                    .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]);
            }
        }
        let child = cmd
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/test.sh)");
        self.child = Some(child);
        let client = self.client();
        eventually("private redis answers", || {
            let c = client.clone();
            async move {
                match c.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-node Redis Cluster (no replicas) on fresh ports.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each node's cluster bus listens on its port + 10 000.
        let ports: Vec<u16> = (0..3).map(|_| free_port_with(10_000)).collect();
        let mut children = Vec::new();
        for p in &ports {
            let node_dir = dir.path().join(p.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            children.push(
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--save", "", "--appendonly", "no"])
                    .current_dir(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server"),
            );
        }
        let cluster = RedisCluster {
            ports,
            children,
            _dir: dir,
        };
        for p in &cluster.ports {
            let url = format!("redis://127.0.0.1:{p}");
            eventually("cluster node answers", || {
                let url = url.clone();
                async move {
                    match redis::Client::open(url) {
                        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
                        Err(_) => false,
                    }
                }
            })
            .await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &cluster.ports {
            let url = format!("redis://127.0.0.1:{p}");
            eventually("cluster state ok on every node", || {
                let url = url.clone();
                async move {
                    let Ok(c) = redis::Client::open(url) else {
                        return false;
                    };
                    let Ok(mut conn) = c.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                }
            })
            .await;
        }
        cluster
    }

    /// The seed URLs, comma-separated (`[redis] cluster = true`).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A plain connection to each node (for `SCRIPT FLUSH` on all of them).
    pub async fn node_conns(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut v = Vec::new();
        for p in &self.ports {
            let c = redis::Client::open(format!("redis://127.0.0.1:{p}")).expect("url");
            v.push(c.get_multiplexed_async_connection().await.expect("node"));
        }
        v
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Inodes of the sockets listening on 127.0.0.1:`port` (namespace-wide; the port is the gateway's).
pub fn listening_sockets(port: u16) -> std::collections::BTreeSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].parse().ok())?
        })
        .collect()
}

/// The listening sockets on 127.0.0.1:`port` once there are `count` of them. [`Gateway::start`] returns
/// as soon as one socket accepts: with one socket per thread, the other threads' sockets may still be
/// being bound then.
pub async fn listening_sockets_once(port: u16, count: usize) -> std::collections::BTreeSet<u64> {
    let start = Instant::now();
    loop {
        let sockets = listening_sockets(port);
        if sockets.len() == count {
            return sockets;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{count} listening socket(s) on port {port} expected, {} listen",
            sockets.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that reads the request and closes the connection without answering.
pub fn resetting_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            drop(stream);
        }
    });
    (addr, accepted)
}

/// Puts token id `jti` on the backend's Redis denylist (as a logout does) for a minute; its key.
pub async fn deny_jti(redis_url: &str, jti: &str) -> String {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("aggios:denylist:jti:{jti}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .expect("set");
    key
}
