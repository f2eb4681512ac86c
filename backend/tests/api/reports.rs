//! Error reports: the real `backend` binary with `SENTRY_DSN` pointing at a local receiver of Sentry
//! envelopes (this test). A handler's panic and a 503 each arrive as one event carrying the request id the
//! client saw, the tenant, the route and the release; no token, password or body is in anything sent,
//! even when the panic's own message holds a token.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::e2e::{dead_port, free_port};
use crate::helpers::*;

/// A local Sentry endpoint: every envelope POSTed to `/api/{project}/envelope/`, raw.
async fn receiver() -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let store = got.clone();
    let port = http_sink(move |path, body| {
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path, String::from_utf8_lossy(&body).into_owned()));
    })
    .await;
    (port, got)
}

/// The events (JSON) of the envelopes received so far.
fn events(got: &Mutex<Vec<(String, String)>>) -> Vec<serde_json::Value> {
    let got = got.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (_, envelope) in got.iter() {
        // An envelope: its header line, then (item header, payload) pairs.
        let lines: Vec<&str> = envelope.lines().collect();
        for pair in lines.get(1..).unwrap_or_default().chunks(2) {
            let header: serde_json::Value = serde_json::from_str(pair[0]).unwrap_or_default();
            if header["type"] == "event" {
                if let Some(payload) = pair.get(1) {
                    out.push(serde_json::from_str(payload).expect("event JSON"));
                }
            }
        }
    }
    out
}

/// A raw request; the status and the request id the backend answered with.
async fn send(port: u16, head: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let id = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, id.trim().to_string())
}

#[tokio::test]
async fn panics_and_5xx_reach_sentry_with_request_tenant_route_and_release_and_no_secrets() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (sentry_port, got) = receiver().await;
    let port = free_port();
    let dead_redis = dead_port();
    let dir = tempfile::tempdir().expect("tempdir");
    // Redis is dead: a login answers 503. The fault path panics, and carries a token in its text.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmb3JnZWQifQ.c2VjcmV0LXNpZ25hdHVyZQ";
    let fault = format!("/api/fault/{jwt}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("serve")
        .env("DATABASE_URL", app_url(&app.db_name))
        .env(
            "REDIS_URL",
            format!("redis://127.0.0.1:{}", dead_redis.port),
        )
        .env(
            "JWT_SECRET",
            std::str::from_utf8(TEST_JWT_SECRET).expect("utf8"),
        )
        .env("BACKEND_LISTEN", format!("127.0.0.1:{port}"))
        .env("STORAGE_DIR", dir.path())
        .env("MIGRATE_ON_START", "0")
        .env("BACKEND_FAULT_PANIC_PATH", &fault)
        .env(
            "SENTRY_DSN",
            format!("http://publickey@127.0.0.1:{sentry_port}/42"),
        )
        .env("SENTRY_ENVIRONMENT", "test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file"))
        .spawn()
        .expect("backend binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the backend never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tenant = uuid::Uuid::new_v4().to_string();
    let secret_password = "hunter2-correct-horse-battery";
    let refresh = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1u";
    let (panic_status, panic_id) = send(
        port,
        &format!(
            "GET {fault} HTTP/1.1\r\nhost: b\r\nx-forwarded-host: acme.aggios.app\r\n\
             x-tenant-id: {tenant}\r\nauthorization: Bearer {jwt}\r\ncookie: session={refresh}"
        ),
        "",
    )
    .await;
    assert_eq!(panic_status, 500);
    // The panic is logged with its backtrace, down to the handler's frames.
    let logged = Instant::now() + Duration::from_secs(30);
    loop {
        let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        let logged_with_backtrace = stderr.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "panic"
                    && v["backtrace"]
                        .as_str()
                        .is_some_and(|b| b.contains("backend::http"))
            })
        });
        if logged_with_backtrace {
            break;
        }
        assert!(
            Instant::now() < logged,
            "no panic with a backtrace through backend::http in stderr:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let login = format!(
        r#"{{"email":"ann@acme.test","password":"{secret_password}","refresh_token":"{refresh}"}}"#
    );
    let (login_status, login_id) = send(
        port,
        &format!(
            "POST /api/auth/login HTTP/1.1\r\nhost: b\r\nx-forwarded-host: acme.aggios.app\r\n\
             x-tenant-id: {tenant}\r\ncontent-type: application/json"
        ),
        &login,
    )
    .await;
    assert_eq!(login_status, 503, "Redis is down");
    // A 4xx is not an error of ours: not reported.
    let (nf_status, nf_id) = send(port, "GET /api/nowhere HTTP/1.1\r\nhost: b", "").await;
    assert_eq!(nf_status, 404);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (panic_event, error_event) = loop {
        let all = events(&got);
        let by_id = |id: &str| all.iter().find(|e| e["tags"]["request_id"] == id).cloned();
        if let (Some(p), Some(e)) = (by_id(&panic_id), by_id(&login_id)) {
            break (p, e);
        }
        assert!(
            Instant::now() < deadline,
            "events for {panic_id} and {login_id} not received: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    // The panic: its message as the exception, the request's tags, the release.
    let exception = panic_event["exception"]["values"][0]["value"]
        .as_str()
        .unwrap_or_default();
    assert!(
        exception.contains("fault injected at /api/fault/"),
        "{panic_event:#}"
    );
    for (event, route) in [(&panic_event, "other"), (&error_event, "auth_login")] {
        assert_eq!(event["tags"]["tenant"], tenant.as_str(), "{event:#}");
        assert_eq!(event["tags"]["route"], route, "{event:#}");
        assert_eq!(
            event["release"],
            concat!("aggios-edge-backend@", env!("CARGO_PKG_VERSION")),
            "{event:#}"
        );
        assert_eq!(event["environment"], "test");
        assert!(event.get("request").is_none(), "no request data: {event:#}");
    }
    let message = error_event["message"]
        .as_str()
        .or_else(|| error_event["logentry"]["message"].as_str())
        .unwrap_or_default();
    assert!(
        message.starts_with("503 service_unavailable on auth_login"),
        "{error_event:#}"
    );
    let all = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        !all.iter().any(|(_, e)| e.contains(&nf_id)),
        "the 404 was reported"
    );
    // Nothing secret in anything sent.
    for (path, envelope) in &all {
        assert!(path.starts_with("/api/42/"), "{path}");
        for secret in [jwt, secret_password, refresh, "eyJ", "hunter2"] {
            assert!(
                !envelope.contains(secret),
                "`{secret}` sent to Sentry: {envelope}"
            );
        }
    }
}

/// The gateway binary with `SENTRY_DSN`: a 502 it answers itself (the upstream refuses connections)
/// arrives as one event with the request id the client saw, the route, the tenant of the host, the
/// upstream and the gateway's release; the client's bearer token and its query are not in it. A hook's
/// panic arrives twice: its 500 with the request id, and the panic with its stack trace.
#[tokio::test]
async fn the_gateways_own_5xx_reach_sentry_with_its_tags_and_no_secrets() {
    let (sentry_port, got) = receiver().await;
    let gw_port = free_port();
    let gone = dead_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:{gw_port}\"\nadmin = \"127.0.0.1:{}\"\n\n\
             [server]\nshutdown_grace = \"5s\"\n\n\
             [tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
             [[upstreams]]\nname = \"gone\"\nservers = [\"127.0.0.1:{}\"]\n\n\
             [[routes]]\nname = \"r\"\nhosts = [\"*.aggios.app\"]\nupstream = \"gone\"\n",
            free_port(),
            gone.port
        ),
    )
    .expect("gateway config");
    let log = dir.path().join("gateway.log");
    let mut gateway = Command::new(crate::e2e::gateway_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "SENTRY_DSN",
            format!("http://publickey@127.0.0.1:{sentry_port}/7"),
        )
        .env("GATEWAY_FAULT_PANIC_PATH", "/boom")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("gateway binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", gw_port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the gateway never listened: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnYXRld2F5In0.Z2F0ZXdheS1zaWduYXR1cmU";
    let (status, request_id) = send(
        gw_port,
        &format!(
            "GET /x?access_token={jwt} HTTP/1.1\r\nhost: acme.aggios.app\r\n\
             authorization: Bearer {jwt}"
        ),
        "",
    )
    .await;
    assert_eq!(status, 502);
    assert!(!request_id.is_empty(), "no request id answered");
    // A hook's panic: answered 500, reported with its request id, and with its stack by the panic
    // integration.
    let (status, panic_id) = send(gw_port, "GET /boom HTTP/1.1\r\nhost: acme.aggios.app", "").await;
    assert_eq!(status, 500);
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        if let Some(e) = events(&got)
            .into_iter()
            .find(|e| e["tags"]["request_id"] == request_id.as_str())
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no event for {request_id}: {:?}",
            got.lock().unwrap_or_else(|p| p.into_inner())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (panic_500, panic_exception) = loop {
        let all = events(&got);
        let answered = all
            .iter()
            .find(|e| e["tags"]["request_id"] == panic_id.as_str())
            .cloned();
        let exception = all.iter().find(|e| {
            e["exception"]["values"][0]["value"]
                .as_str()
                .is_some_and(|v| v.contains("fault injected at /boom"))
        });
        if let (Some(a), Some(x)) = (answered, exception) {
            break (a, x.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the panic was not reported: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(panic_500["tags"]["status"], "500", "{panic_500:#}");
    assert!(
        panic_exception["exception"]["values"][0]["stacktrace"]["frames"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "no stack trace: {panic_exception:#}"
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert_eq!(event["tags"]["route"], "r", "{event:#}");
    assert_eq!(event["tags"]["status"], "502", "{event:#}");
    assert_eq!(event["tags"]["upstream"], "gone", "{event:#}");
    assert_eq!(event["tags"]["tenant"], "acme", "{event:#}");
    assert_eq!(
        event["release"],
        concat!("aggios-edge-gateway@", env!("CARGO_PKG_VERSION")),
        "{event:#}"
    );
    for (path, envelope) in got.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        assert!(path.starts_with("/api/7/"), "{path}");
        assert!(
            !envelope.contains("eyJ"),
            "a token sent to Sentry: {envelope}"
        );
    }
}
