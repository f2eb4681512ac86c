//! Postgres stops mid-test: requests get 503 with Retry-After (never a 500, never a crash), and the
//! service recovers by itself when it is back. Uses a private PostgreSQL cluster on a free port, so the
//! machine's shared server is never touched.

use std::time::{Duration, Instant};

mod common;

use backend::app::serve;
use backend::config::{Config, StorageConfig};
use backend::state::AppState;
use bytes::Bytes;
use common::private_pg::PrivatePg;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// This run's client address (a documentation IPv6 address, random per process).
fn client_ip() -> &'static str {
    static IP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IP.get_or_init(|| {
        let r: u32 = rand::random();
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xfeed, (r >> 16) as u16, r as u16, 0, 0, 1)
            .to_string()
    })
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    host: &str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    call_as(addr, method, path, host, client_ip(), "ann@acme.test").await
}

/// A login attempt from `ip` for `email` (a wrong password).
async fn call_as(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    ip: &str,
    email: &str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "backend")
        .header("x-forwarded-host", host)
        // A client address of this run's own: throttling counters live in the shared Redis for 15 min.
        .header("x-aggios-client-ip", ip)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "email": email, "password": "wrong password" }).to_string(),
        )))
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_503_then_recovers() {
    let pg = PrivatePg::start();
    let owner = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let app_url = format!("postgres://aggios_outage:pw@127.0.0.1:{}/postgres", pg.port);
    backend::db::migrate(&owner, &app_url)
        .await
        .expect("migrate");
    let owner_pool = sqlx::PgPool::connect(&owner).await.expect("owner pool");
    backend::db::tenants::create(&owner_pool, "Acme", "acme", None)
        .await
        .expect("tenant");
    owner_pool.close().await;

    let files = tempfile::tempdir().expect("tempdir");
    let config = Config {
        database_url: app_url.clone(),
        database_owner_url: owner.clone(),
        database_read_url: None,
        redis_url: std::env::var("TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        jwt_secret: b"outage-secret-outage-secret-outage-secret".to_vec(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        internal_listen: None,
        storage: StorageConfig::Local {
            dir: files.path().to_path_buf(),
        },
        access_ttl: Duration::from_secs(60),
        refresh_ttl: Duration::from_secs(60),
        max_file_bytes: 1024,
        inline_types: Vec::new(),
        trusted_gateways: vec!["127.0.0.0/8".parse().expect("net")],
        migrate_on_start: false,
        fault_panic_path: None,
        base_domains: vec!["aggios.app".into(), "aggios.localhost".into()],
        default_plan: "free".into(),
        usage_flush: std::time::Duration::from_secs(5),
        shutdown_drain: std::time::Duration::ZERO,
        oauth: Default::default(),
        db_slow_query: std::time::Duration::from_millis(backend::config::DEFAULT_DB_SLOW_QUERY_MS),
    };
    let state = AppState::new(&config).await.expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, state, false, std::future::pending()));

    let (status, _, body) = call(addr, "POST", "/api/auth/login", "acme.aggios.app").await;
    assert_eq!(
        status, 401,
        "baseline: a wrong password, database up: {body}"
    );

    // Steady traffic all through the outage: logins from many addresses for many accounts (so the
    // throttle never speaks), each answer recorded with whether it carried Retry-After.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u16, bool)>::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop_load, answers) = (stop_load.clone(), answers.clone());
            tokio::spawn(async move {
                while !stop_load.load(std::sync::atomic::Ordering::SeqCst) {
                    let r: u64 = rand::random();
                    let ip = std::net::Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0xbeef,
                        (r >> 48) as u16,
                        (r >> 32) as u16,
                        (r >> 16) as u16,
                        r as u16,
                        1,
                    )
                    .to_string();
                    let email = format!("u{r}@acme.test");
                    let (status, headers, _) = call_as(
                        addr,
                        "POST",
                        "/api/auth/login",
                        "acme.aggios.app",
                        &ip,
                        &email,
                    )
                    .await;
                    answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((status, headers.contains_key("retry-after")));
                }
            })
        })
        .collect();
    let count = |answers: &std::sync::Mutex<Vec<(u16, bool)>>, status: u16| {
        answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(s, _)| *s == status)
            .count()
    };
    let wait_for = |status: u16, n: usize| {
        let answers = answers.clone();
        async move {
            let start = Instant::now();
            let target = count(&answers, status) + n;
            while count(&answers, status) < target {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no {n} more {status}s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(401, 20).await;

    pg.stop();
    wait_for(503, 20).await;
    let (status, headers, body) = call(addr, "POST", "/api/auth/login", "acme.aggios.app").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("service_unavailable")),
        "{body}"
    );
    assert!(headers.get("retry-after").is_some());
    assert!(
        !body.to_string().to_lowercase().contains("sql"),
        "no SQL text in errors: {body}"
    );
    let (status, _, body) = call(addr, "GET", "/readyz", "acme.aggios.app").await;
    assert_eq!(
        (status, body["postgres"].as_bool()),
        (503, Some(false)),
        "readyz while down: {body}"
    );

    pg.pg_ctl_start();
    let start = Instant::now();
    loop {
        let (status, _, body) = call(addr, "POST", "/api/auth/login", "acme.aggios.app").await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting: {body}");
        assert!(start.elapsed() < Duration::from_secs(60), "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The traffic recovers too, and nothing but 401 (up) and 503 with Retry-After (down) was answered.
    wait_for(401, 20).await;
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.await.expect("load task");
    }
    let answers = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut by_status = std::collections::BTreeMap::new();
    for (s, _) in &answers {
        *by_status.entry(*s).or_insert(0) += 1;
    }
    assert!(
        by_status.keys().all(|s| *s == 401 || *s == 503),
        "answers under the outage: {by_status:?}"
    );
    assert!(
        answers.iter().all(|(s, retry)| *s != 503 || *retry),
        "a 503 without Retry-After"
    );
}
