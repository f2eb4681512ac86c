//! The whole way: the real `gateway` binary in front of this backend, with edge auth and the Redis
//! denylist: login → call → logout → the same token is refused at the edge.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

pub(crate) struct GatewayProcess {
    child: Child,
    pub port: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Requests this gateway has sent to the backend and had a response head for (its own count:
    /// the backend's metrics are shared by every test app of this process).
    pub(crate) async fn backend_requests(&self) -> f64 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .expect("admin");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The admin listener answers loopback Host names only (DNS rebinding).
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut body = String::new();
        stream.read_to_string(&mut body).await.expect("read");
        let series = "gateway_upstream_request_duration_seconds_count{upstream=\"backend\"} ";
        assert!(body.starts_with("HTTP/1.1 200"), "admin /metrics: {body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A loopback port where nothing listens, held for as long as the value lives: bound but not
/// listening, so connections to it are refused, and no other test's listener can be given it. A port
/// from [`free_port`] used as a dead address could be: the Sentry test's receiver once got the dead
/// policy-lookup port of a plans test, and that gateway's lookups among its envelopes (a CI failure).
pub(crate) struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub(crate) fn dead_port() -> DeadPort {
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

/// The gateway binary built by the same `cargo test` run (target/<profile>/gateway).
pub(crate) fn gateway_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = profile_dir.join("gateway");
    assert!(
        bin.exists(),
        "{} not found: run the workspace tests (cargo test --workspace) so the gateway is built",
        bin.display()
    );
    bin
}

async fn start_gateway(
    backend: std::net::SocketAddr,
    internal: std::net::SocketAddr,
) -> GatewayProcess {
    start_gateway_with(backend, internal, "", "").await
}

/// The gateway in front of `backend`, with `jwt_extra` in `[auth.jwt]` and `routes` before the
/// standard ones.
pub(crate) async fn start_gateway_with(
    backend: std::net::SocketAddr,
    internal: std::net::SocketAddr,
    jwt_extra: &str,
    routes: &str,
) -> GatewayProcess {
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[entrypoints]
http = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[tenancy]
base_domains = ["aggios.app"]

# The test client stands in for a load balancer in front of the gateway.
[forwarding]
trusted_proxies = ["127.0.0.1/32"]

[auth.jwt]
secret_env = "E2E_JWT_SECRET"
{jwt_extra}

[auth.api_keys]
lookup_url = "http://{internal}/internal/api-keys/{{prefix}}"
cache_ttl = "5s"

[redis]
url_env = "E2E_REDIS_URL"
timeout = "500ms"
revocation_cache = "100ms"

[[upstreams]]
name = "backend"
servers = ["{backend}"]

{routes}
[[routes]]
name = "login"
hosts = ["*.aggios.app"]
path_prefix = "/api/auth/login"
upstream = "backend"

[[routes]]
name = "files-read"
hosts = ["*.aggios.app"]
path_prefix = "/api/files"
methods = ["GET"]
auth = "jwt_or_api_key"
scopes = ["files:read"]
upstream = "backend"

[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
on_store_error = "closed"
upstream = "backend"
"#
        ),
    )
    .expect("config");
    let child = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "E2E_JWT_SECRET",
            std::str::from_utf8(TEST_JWT_SECRET).expect("utf8"),
        )
        .env("E2E_REDIS_URL", redis_url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gateway");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    GatewayProcess {
        child,
        port,
        admin,
        _dir: dir,
    }
}

/// A request to the gateway as a browser would send it.
pub(crate) async fn via_gateway(
    gw: &GatewayProcess,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    via_gateway_with(gw, method, host, path, token, &[], body).await
}

async fn via_gateway_with(
    gw: &GatewayProcess,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map_or_else(bytes::Bytes::new, |b| bytes::Bytes::from(b.to_string()));
    send_at_edge(gw, req, body).await
}

/// A form POST (`application/x-www-form-urlencoded`) through the gateway.
pub(crate) async fn edge_form(
    gw: &GatewayProcess,
    host: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    send_at_edge(
        gw,
        http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", host)
            .header("content-type", "application/x-www-form-urlencoded"),
        bytes::Bytes::from(body.to_string()),
    )
    .await
}

/// Sends `req` with `body` to the gateway on a new connection; the status and the JSON answered.
async fn send_at_edge(
    gw: &GatewayProcess,
    req: http::request::Builder,
    body: bytes::Bytes,
) -> (u16, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(req.body(http_body_util::Full::new(body)).expect("request"))
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// `GET path` on `host` through the gateway with `token`.
pub(crate) async fn get_at_edge(
    gw: &GatewayProcess,
    host: &str,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    via_gateway(gw, "GET", host, path, Some(token), None).await
}

/// Logs `email` of the tenant of `host` in through the gateway; returns (access, refresh).
async fn login_at_edge(gw: &GatewayProcess, host: &str, email: &str) -> (String, String) {
    let (status, pair) = via_gateway(
        gw,
        "POST",
        host,
        "/api/auth/login",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(
        status, 200,
        "login {email}@{host} through the gateway: {pair}"
    );
    (
        pair["access_token"].as_str().expect("token").to_string(),
        pair["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

#[tokio::test]
async fn login_call_logout_then_refused_at_the_edge() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    app.tenant("globex").await;
    app.user(acme, "ann@acme.test", "member").await;
    let gw = start_gateway(app.addr, app.internal_addr).await;

    let (access, _) = login_at_edge(&gw, "acme.aggios.app", "ann@acme.test").await;

    let (status, me) = get_at_edge(&gw, "acme.aggios.app", "/api/users/me", &access).await;
    assert_eq!(
        (status, me["user"]["email"].as_str()),
        (200, Some("ann@acme.test"))
    );

    // The same token on another tenant's host is refused by the gateway (403), before the backend.
    let (status, body) = get_at_edge(&gw, "globex.aggios.app", "/api/users/me", &access).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_mismatch"))
    );

    let (status, _) = via_gateway(
        &gw,
        "POST",
        "acme.aggios.app",
        "/api/auth/logout",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Refused at the edge (once its 100 ms revocation cache has caught up): the backend, which would
    // refuse it the same way, never sees the request. The gateway's count of backend answers is the
    // witness (the backend's own metrics are shared by every test app of this process).
    let start = Instant::now();
    loop {
        let seen = gw.backend_requests().await;
        let (status, body) = get_at_edge(&gw, "acme.aggios.app", "/api/users/me", &access).await;
        if status == 401
            && body["error"]["code"] == "token_revoked"
            && gw.backend_requests().await == seen
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "logged-out token not refused at the edge: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_api_key_works_through_the_gateway_until_revoked() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    app.tenant("globex").await;
    app.user(acme, "boss@acme.test", "admin").await;
    let gw = start_gateway(app.addr, app.internal_addr).await;
    let (admin, _) = login_at_edge(&gw, "acme.aggios.app", "boss@acme.test").await;
    let (status, created) = via_gateway(
        &gw,
        "POST",
        "acme.aggios.app",
        "/api/api-keys",
        Some(&admin),
        Some(json!({ "name": "zapier", "scopes": ["files:read"] })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let id = created["api_key"]["id"].as_str().expect("id").to_string();

    let (status, body) = via_gateway_with(
        &gw,
        "GET",
        "acme.aggios.app",
        "/api/files",
        None,
        &[("x-api-key", &key)],
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "the key is accepted by the edge and the backend: {body}"
    );
    let (status, body) = via_gateway_with(
        &gw,
        "GET",
        "globex.aggios.app",
        "/api/files",
        None,
        &[("x-api-key", &key)],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_mismatch")),
        "another tenant's host"
    );

    let (status, _) = via_gateway(
        &gw,
        "DELETE",
        "acme.aggios.app",
        &format!("/api/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let start = Instant::now();
    loop {
        let (status, body) = via_gateway_with(
            &gw,
            "GET",
            "acme.aggios.app",
            "/api/files",
            None,
            &[("x-api-key", &key)],
            None,
        )
        .await;
        // `invalid_api_key` is the gateway's answer (the backend would say `api_key_revoked`).
        if status == 401 && body["error"]["code"] == "invalid_api_key" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "revoked key still accepted at the edge: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() <= Duration::from_secs(6),
        "the revocation took {:?}, more than cache_ttl",
        start.elapsed()
    );
}

/// Behind a trusted load balancer, each client keeps its own login-throttling bucket: the backend takes
/// the address the gateway computed, not the last `X-Forwarded-For` entry (the balancer).
#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_their_own_login_buckets() {
    let app = TestApp::spawn().await;
    app.tenant("acme").await;
    let gw = start_gateway(app.addr, app.internal_addr).await;
    // Fresh addresses per run: the throttling counters live in the shared Redis for 15 minutes.
    let run = rand::random::<u32>();
    let addr = |last: u16| -> &'static str {
        let ip =
            std::net::Ipv6Addr::new(0x2001, 0xdb8, (run >> 16) as u16, run as u16, 0, 0, 0, last);
        Box::leak(ip.to_string().into_boxed_str())
    };
    let (a, b) = (addr(0xa), addr(0xb));
    let login = |from: &'static str, n: usize| {
        let gw = &gw;
        async move {
            via_gateway_with(
                gw,
                "POST",
                "acme.aggios.app",
                "/api/auth/login",
                None,
                &[("x-forwarded-for", from)],
                Some(json!({ "email": format!("nobody{n}@acme.test"), "password": "guess" })),
            )
            .await
            .0
        }
    };
    // One client uses up its per-IP budget (20) with different accounts...
    for n in 0..20 {
        assert_eq!(login(a, n).await, 401);
    }
    assert_eq!(login(a, 100).await, 429, "the per-IP limit did not apply");
    // ...and another client behind the same balancer is not locked out.
    assert_eq!(login(b, 200).await, 401);
    // A client cannot pick its own address by sending the gateway's header.
    let spoofed = via_gateway_with(
        &gw,
        "POST",
        "acme.aggios.app",
        "/api/auth/login",
        None,
        &[
            ("x-forwarded-for", a),
            ("x-aggios-client-ip", "198.51.100.1"),
        ],
        Some(json!({ "email": "nobody300@acme.test", "password": "guess" })),
    )
    .await
    .0;
    assert_eq!(
        spoofed, 429,
        "a spoofed X-Aggios-Client-Ip escaped the bucket"
    );
    let ips: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT ip FROM audit_log WHERE action = 'login_failed' ORDER BY ip",
    )
    .fetch_all(&app.owner_pool)
    .await
    .expect("audit");
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(ips, want);
}

#[tokio::test]
async fn deactivation_and_demotion_revoke_live_tokens_at_the_edge_and_the_backend() {
    let app = TestApp::spawn().await;
    let acme = app
        .tenant_with_user("acme", "boss@acme.test", "admin")
        .await;
    let ann = app.user(acme, "ann@acme.test", "admin").await;
    let carl = app.user(acme, "carl@acme.test", "member").await;
    let gw = start_gateway(app.addr, app.internal_addr).await;
    let login = |email: &'static str| login_at_edge(&gw, "acme.aggios.app", email);
    let (boss, _) = login("boss@acme.test").await;
    let (ann_old, _) = login("ann@acme.test").await;
    let (carl_old, carl_refresh) = login("carl@acme.test").await;
    let me = |token: String| {
        let gw = &gw;
        async move { get_at_edge(gw, "acme.aggios.app", "/api/users/me", &token).await }
    };
    assert_eq!(me(ann_old.clone()).await.0, 200);

    // Demotion: ann's admin token stops working everywhere, not at its expiry.
    let (status, body) = via_gateway(
        &gw,
        "PATCH",
        "acme.aggios.app",
        &format!("/api/users/{ann}"),
        Some(&boss),
        Some(json!({ "role": "member" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Refused at the edge (within its revocation cache, 100 ms here): the backend never sees it.
    let start = Instant::now();
    loop {
        let seen = gw.backend_requests().await;
        let (status, body) = me(ann_old.clone()).await;
        if status == 401
            && body["error"]["code"] == "token_revoked"
            && gw.backend_requests().await == seen
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "demoted token not refused at the edge: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the backend refuses it on its own when reached directly (here: minting an API key).
    let (status, body, _) = app
        .post(
            "/api/api-keys",
            "acme.aggios.app",
            Some(&ann_old),
            json!({ "name": "late", "scopes": ["files:read"] }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    // A new login gets a token with the new role (issued after the marker's second).
    let start = Instant::now();
    loop {
        let (token, _) = login("ann@acme.test").await;
        let (status, body) = me(token).await;
        if status == 200 {
            assert_eq!(body["user"]["role"], "member", "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no working login after demotion: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deactivation: access and refresh tokens stop working.
    let (status, body) = via_gateway(
        &gw,
        "PATCH",
        "acme.aggios.app",
        &format!("/api/users/{carl}"),
        Some(&boss),
        Some(json!({ "is_active": false })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let start = Instant::now();
    while me(carl_old.clone()).await.0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "deactivated user's token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = app
        .get("/api/users/me", "acme.aggios.app", Some(&carl_old))
        .await;
    assert_eq!(status, 401);
    // (Straight to the backend: the test gateway's routes put a token in front of /api/auth/refresh.)
    let (status, body) = app.refresh("acme.aggios.app", &carl_refresh).await;
    assert_eq!(
        status, 401,
        "a deactivated user's refresh token still works: {body}"
    );
}

/// A [`DeadPort`] refuses connections, and no listener can be bound to it while it is held (what a
/// [`free_port`] used as a dead address could not promise).
#[tokio::test]
async fn a_dead_port_refuses_connections_and_cannot_be_taken() {
    let dead = dead_port();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", dead.port)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(std::net::TcpListener::bind(("127.0.0.1", dead.port)).is_err());
}
