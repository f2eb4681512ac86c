//! The service itself: h2c, graceful shutdown with a request in flight.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn speaks_h2c() {
    let app = TestApp::spawn().await;
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/healthz", app.addr))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = sender.send_request(req).await.expect("send");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let mut app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (token, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /api/files/inflight.txt HTTP/1.1\r\nHost: b\r\nX-Forwarded-Host: acme.aggios.app\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // Shut down only once the service is handling the upload (its body half sent).
    let start = std::time::Instant::now();
    while app
        .state
        .in_flight
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the upload never became a request in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.shutdown();
    // New connections are refused once the listener is gone…
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(app.addr).await.is_ok() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "listener still accepting after shutdown"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // …but the request in flight completes.
    s.write_all(b"world").await.expect("write rest");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
}

/// `backend_panics_total`, read from the service's own `/metrics`.
async fn panics_counted(app: &TestApp) -> f64 {
    let (_, body, _) = app
        .call_raw("GET", "/metrics", "x", None, "", Bytes::new())
        .await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("backend_panics_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("backend_panics_total missing from /metrics:\n{text}"))
}

/// A handler that panics ends its own request with a 500 carrying the request id, is counted, and
/// leaves the process and the other requests alone (a request in flight on another connection, and the
/// next ones).
#[tokio::test]
async fn a_panic_in_a_handler_is_a_500_for_that_request_only() {
    let app = TestApp::spawn_with_fault("/api/fault/panic").await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (token, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let before = panics_counted(&app).await;
    let (status, body, headers) = app.get("/api/fault/panic", "acme.aggios.app", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("internal_error")),
        "{body}"
    );
    let id = body["error"]["request_id"].as_str().expect("request id");
    assert_eq!(
        headers
            .get(contracts::headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
        Some(id)
    );
    assert_eq!(panics_counted(&app).await - before, 1.0);
    // Many at once, beside ordinary requests: each panics alone.
    let calls = (0..8).map(|i| {
        let (app, token) = (&app, token.clone());
        async move {
            if i % 2 == 0 {
                app.get("/api/fault/panic", "acme.aggios.app", None).await.0
            } else {
                app.get("/api/users/me", "acme.aggios.app", Some(&token))
                    .await
                    .0
            }
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, [500, 200, 500, 200, 500, 200, 500, 200]);
    assert_eq!(panics_counted(&app).await - before, 5.0);
    let (status, me, _) = app
        .get("/api/users/me", "acme.aggios.app", Some(&token))
        .await;
    assert_eq!(
        (status, me["user"]["email"].as_str()),
        (200, Some("ann@acme.test"))
    );
}

#[tokio::test]
async fn readyz_reports_each_dependency() {
    let app = TestApp::spawn().await;
    let (status, body, _) = app.get("/readyz", "x", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({ "status": "ready", "postgres": true, "redis": true, "storage": true })
    );
    let (status, text, _) = app
        .call_raw("GET", "/metrics", "x", None, "", Bytes::new())
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&text);
    for series in [
        "backend_http_requests_total{",
        "backend_http_request_duration_seconds_bucket{",
        "backend_db_pool_connections{state=\"idle\"}",
        "backend_db_pool_connections{state=\"max\"} 16",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }
}

#[tokio::test]
async fn redis_down_gives_503_not_500_and_the_service_still_starts() {
    let dead = format!(
        "redis://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port()
    );
    let app = TestApp::spawn_with_redis(dead).await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (status, body, headers) = app
        .try_login("acme.aggios.app", "ann@acme.test", PASSWORD)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("service_unavailable")),
        "{body}"
    );
    assert!(headers.get("retry-after").is_some());
    let (status, body, _) = app.get("/readyz", "x", None).await;
    assert_eq!(
        (status, body["redis"].as_bool(), body["postgres"].as_bool()),
        (503, Some(false), Some(true)),
        "{body}"
    );
    let (status, _, _) = app.get("/healthz", "x", None).await;
    assert_eq!(status, 200, "the process is alive and answers");
}

/// `backend serve` refuses a database role that would make row-level security moot (a superuser here;
/// BYPASSRLS is the same check), before serving anything.
#[tokio::test]
async fn a_role_that_bypasses_rls_is_refused_at_start() {
    let files = tempfile::tempdir().expect("tempdir");
    let config = backend::config::Config {
        // The tests' admin URL connects as the `postgres` superuser.
        database_url: admin_url(),
        database_owner_url: admin_url(),
        database_read_url: None,
        redis_url: redis_url(),
        jwt_secret: TEST_JWT_SECRET.to_vec(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        internal_listen: None,
        storage: backend::config::StorageConfig::Local {
            dir: files.path().to_path_buf(),
        },
        access_ttl: std::time::Duration::from_secs(900),
        refresh_ttl: std::time::Duration::from_secs(3600),
        max_file_bytes: 1024,
        trusted_gateways: Vec::new(),
        inline_types: Vec::new(),
        migrate_on_start: false,
        fault_panic_path: None,
        base_domains: vec!["aggios.app".into(), "aggios.localhost".into()],
        default_plan: "free".into(),
        usage_flush: std::time::Duration::from_secs(5),
        shutdown_drain: std::time::Duration::ZERO,
        oauth: Default::default(),
        db_slow_query: std::time::Duration::from_millis(backend::config::DEFAULT_DB_SLOW_QUERY_MS),
    };
    match backend::state::AppState::new(&config).await {
        Err(backend::state::StartError::BypassesRls) => {}
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a superuser role was accepted"),
    }
}

/// Every backend metric that the alert rules and the dashboard as code (compose/prometheus,
/// compose/grafana) use is on a live backend's `/metrics`: a renamed metric fails here, not silently in
/// Prometheus or Grafana.
#[tokio::test]
async fn every_backend_metric_the_rules_and_the_dashboard_use_is_on_live_metrics() {
    let compose = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose");
    let text = [
        "prometheus/rules/aggios-edge.rules.yml",
        "grafana/dashboards/aggios-edge.json",
    ]
    .map(|f| std::fs::read_to_string(compose.join(f)).expect(f))
    .join("\n");
    let used = contracts::metrics::names_in(&text, "backend_");
    assert!(used.len() >= 3, "{used:?}");
    let app = TestApp::spawn().await;
    // Requests first, so that the per-route and per-statement series have a child: a login runs the
    // tenant, user and refresh-token statements.
    let _ = app.get("/healthz", "x", None).await;
    app.tenant_with_user("metrics", "m@metrics.test", "member")
        .await;
    let _ = app.login("metrics.aggios.app", "m@metrics.test").await;
    let (_, body, _) = app
        .call_raw("GET", "/metrics", "x", None, "", Bytes::new())
        .await;
    let text = String::from_utf8_lossy(&body);
    // The login's statements, each timed under its own name.
    for statement in ["tenants.by_host", "users.by_email", "refresh_tokens.insert"] {
        let series =
            format!("backend_db_query_duration_seconds_count{{statement=\"{statement}\"}} ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&series) && !l.ends_with(" 0")),
            "no {series}in /metrics:\n{text}"
        );
    }
    for name in &used {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} (used by the alert rules or the dashboard) is missing from /metrics:\n{text}"
        );
    }
}

/// Lines written by the process-wide tracing subscriber that the slow-statement test installs.
static CAPTURED: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

#[derive(Clone)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// With `DB_SLOW_QUERY_MS` at 0 every statement is "slow": each is logged at WARN as JSON with its SQL
/// (placeholders), elapsed time and the request's id, and no bound value — not the login's email, not
/// the tenant id.
#[tokio::test]
async fn access_lines_carry_the_gateways_request_id_and_slow_statements_no_parameters() {
    let buf = CAPTURED
        .get_or_init(|| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let writer = Capture(buf.clone());
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "sqlx::query=warn,backend::http=info",
                ))
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber");
            buf
        })
        .clone();
    let app = TestApp::spawn_with_slow_query_log(std::time::Duration::ZERO).await;
    let email = format!("slow-{}@acme.test", uuid::Uuid::new_v4().simple());
    let tenant = app.tenant_with_user("acme", &email, "member").await;
    let _ = app.login("acme.aggios.app", &email).await;
    // A request with the gateway's id: the backend's access line carries that id.
    let request_id = format!("gw-{}", uuid::Uuid::new_v4().simple());
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET /healthz HTTP/1.1\r\nHost: acme.aggios.app\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let text = String::from_utf8_lossy(&buf.lock().expect("lock")).into_owned();
    let access = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request" && v["request_id"] == request_id.as_str());
    let access = access.unwrap_or_else(|| panic!("no access line with {request_id}:\n{text}"));
    assert_eq!(access["status"], 200);
    assert_eq!(access["path"], "/healthz");
    assert!(access["duration_ms"].as_f64().is_some());
    let slow: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("slow statement"))
        })
        .collect();
    assert!(!slow.is_empty(), "no slow-statement line:\n{text}");
    let login_lookup = slow.iter().find(|v| {
        v["summary"]
            .as_str()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with("select"))
            && v["level"] == "WARN"
            && v["elapsed_secs"].as_f64().is_some()
    });
    assert!(login_lookup.is_some(), "no timed SELECT among:\n{slow:#?}");
    // The statements of a request carry its request id (the span of `http::handle`).
    assert!(
        slow.iter().any(|v| v["span"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())),
        "no slow statement carries a request id:\n{slow:#?}"
    );
    assert!(
        !text.contains(&email) && !text.contains(&tenant.to_string()),
        "a bound value reached the log:\n{text}"
    );
}
