//! The command-line tasks as the compose stack runs them: the one-shot `migrate` service has the two
//! database URLs in its environment and nothing else (no Redis, JWT or S3 settings).

use std::io::Write as _;
use std::process::{Command, Stdio};

use sqlx::postgres::PgPoolOptions;

use crate::helpers::{admin_url, app_url, owner_url};

fn backend(db: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", app_url(db))
        .env("DATABASE_OWNER_URL", owner_url(db))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backend binary");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("backend exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn migrate_and_the_admin_commands_need_only_the_database_urls() {
    let db = format!("aggios_t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await
        .expect("connect as Postgres superuser");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create database");

    let (ok, out) = backend(&db, &["migrate"], None);
    assert!(ok && out.contains("migrations applied"), "{out}");
    let (ok, out) = backend(
        &db,
        &["tenant", "create", "--subdomain", "acme", "--name", "Acme"],
        None,
    );
    assert!(ok && out.contains("\"acme\""), "{out}");
    let (ok, out) = backend(
        &db,
        &[
            "user",
            "create",
            "--tenant",
            "acme",
            "--email",
            "a@acme.test",
        ],
        Some("a-long-enough-password\n"),
    );
    assert!(!ok && out.contains("--password-stdin"), "{out}");
    let (ok, out) = backend(
        &db,
        &[
            "user",
            "create",
            "--tenant",
            "acme",
            "--email",
            "a@acme.test",
            "--password-stdin",
        ],
        Some("a-long-enough-password\n"),
    );
    assert!(ok && out.contains("a@acme.test"), "{out}");
    // Serving still refuses to start without the rest of its settings, and says which.
    let (ok, out) = backend(&db, &["serve"], None);
    assert!(!ok && out.contains("REDIS_URL"), "{out}");

    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
}

/// A raw HTTP/1.1 GET on a new connection: the status, or None when the connection is refused.
async fn get_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.get(9..12)?.parse().ok()
}

/// SIGTERM with `SHUTDOWN_DRAIN_SECS`: `/readyz` answers 503 at once (the gateway's health checks and
/// DNS take the replica out), while new requests are still served for the drain; then the process
/// exits. Without the drain, a scaled-down replica refused connections the gateway still sent it.
#[tokio::test]
async fn sigterm_drains_not_ready_but_serving_then_exits() {
    let app = crate::helpers::TestApp::spawn().await;
    let port = crate::e2e::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("serve")
        .env("DATABASE_URL", app_url(&app.db_name))
        .env("REDIS_URL", crate::helpers::redis_url())
        .env(
            "JWT_SECRET",
            std::str::from_utf8(crate::helpers::TEST_JWT_SECRET).expect("utf8"),
        )
        .env("BACKEND_LISTEN", format!("127.0.0.1:{port}"))
        .env("STORAGE_DIR", dir.path())
        .env("MIGRATE_ON_START", "0")
        .env("SHUTDOWN_DRAIN_SECS", "3")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("backend binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get_status(port, "/readyz").await != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Not ready at once; still serving other requests on new connections during the drain.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get_status(port, "/readyz").await != Some(503) {
        assert!(std::time::Instant::now() < until, "/readyz never said 503");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_status(port, "/healthz").await,
        Some(200),
        "refused during the drain"
    );
    // Then it exits on its own.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the backend did not exit after its drain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_status(port, "/healthz").await,
        None,
        "still listening after exit"
    );
}
