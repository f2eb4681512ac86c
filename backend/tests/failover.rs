//! Postgres failover without a restart: a private primary streams to a private hot standby; the backend
//! binary runs with both in `DATABASE_URL` (libpq's host list) and the standby as `DATABASE_READ_URL`.
//! Under logins (each acknowledged login is a refresh token written) and user-list reads (served by the
//! replica), the primary is stopped and the standby promoted: the same backend process writes to the
//! new primary, every acknowledged write is there, and no read failed during the switch: while the
//! primary is away the backend says `degraded` on /readyz (it stays in the gateway's rotation) and serves
//! token-authenticated reads from the replica.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pool;
use common::private_pg::{as_postgres, PrivatePg};

const APP_ROLE: &str = "aggios_failover_app";
const JWT_SECRET: &str = "failover-secret-failover-secret-failover!";
const PASSWORD: &str = "correct horse battery";
const HOST: &str = "acme.aggios.app";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One request on a new connection: the status and the JSON body (`Null` when there is none); `None`
/// when the connection failed.
async fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: backend\r\nx-forwarded-host: {HOST}\r\n\
         x-aggios-client-ip: 10.9.8.7\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.get(9..12)?.parse().ok()?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Some((status, json))
}

async fn login(port: u16) -> Option<(u16, serde_json::Value)> {
    call(
        port,
        "POST",
        "/api/auth/login",
        None,
        Some(serde_json::json!({ "email": "ann@acme.test", "password": PASSWORD })),
    )
    .await
}

#[derive(Default)]
struct Counts {
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

#[tokio::test]
async fn a_promoted_replica_takes_the_writes_without_a_restart_and_keeps_every_acknowledged_one() {
    // The primary, its database, the schema, one tenant and its admin.
    let primary = PrivatePg::init();
    primary.configure(&[("wal_level", "replica"), ("max_wal_senders", "4")]);
    primary.pg_ctl_start();
    let p1 = primary.port;
    let admin = pool(&format!("postgres://postgres@127.0.0.1:{p1}/postgres")).await;
    sqlx::query("CREATE DATABASE aggios")
        .execute(&admin)
        .await
        .expect("create db");
    drop(admin);
    let owner_url = format!("postgres://postgres@127.0.0.1:{p1}/aggios");
    let app_url = format!("postgres://{APP_ROLE}:pw@127.0.0.1:{p1}/aggios");
    backend::db::migrate(&owner_url, &app_url)
        .await
        .expect("migrate");
    let owner = pool(&owner_url).await;
    let acme = backend::db::tenants::create(&owner, "Acme Inc", "acme", None)
        .await
        .expect("tenant")
        .id;
    let hash = backend::auth::hash_password(PASSWORD).expect("hash");
    let mut tx = backend::db::tenant_tx(&owner, acme).await.expect("tx");
    let ann = backend::db::users::create(
        &mut tx,
        &backend::db::users::NewUser {
            tenant_id: acme,
            email: "ann@acme.test",
            password_hash: &hash,
            first_name: "",
            last_name: "",
            role: "admin",
        },
    )
    .await
    .expect("user")
    .id;
    tx.commit().await.expect("commit");
    drop(owner);

    // The hot standby: a base backup streaming from the primary (-R writes its primary_conninfo).
    let standby_dir = PrivatePg::postgres_dir();
    let data = standby_dir.path().join("data");
    let out = as_postgres(
        &PrivatePg::bin_dir().join("pg_basebackup"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-D",
            data.to_str().expect("utf8"),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
    );
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let standby = PrivatePg::on(standby_dir);
    standby.pg_ctl_start();
    let p2 = standby.port;
    let standby_owner = pool(&format!("postgres://postgres@127.0.0.1:{p2}/aggios")).await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&standby_owner)
        .await
        .expect("recovery state");
    assert!(in_recovery, "the standby starts as a replica");

    // The backend binary, both hosts in DATABASE_URL, reads from the standby.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let files = tempfile::tempdir().expect("tempdir");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut backend = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("postgres://{APP_ROLE}:pw@127.0.0.1:{p1},127.0.0.1:{p2}/aggios"),
        )
        .env(
            "DATABASE_READ_URL",
            format!("postgres://{APP_ROLE}:pw@127.0.0.1:{p2}/aggios"),
        )
        .env("REDIS_URL", redis_url())
        .env("JWT_SECRET", JWT_SECRET)
        .env("BACKEND_LISTEN", format!("127.0.0.1:{port}"))
        .env("STORAGE_DIR", files.path())
        .env("MIGRATE_ON_START", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("backend binary");
    let pid = backend.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        if let Some((200, body)) = login(port).await {
            break body["access_token"].as_str().expect("access").to_string();
        }
        assert!(Instant::now() < deadline, "the backend never logged in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Load: logins (writes) and user lists (reads), one of each at a time, counted.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let last_refresh = Arc::new(Mutex::new(None::<String>));
    let writer = {
        let (counts, stop, last_refresh) = (counts.clone(), stop.clone(), last_refresh.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match login(port).await {
                    Some((200, body)) => {
                        counts.writes_ok.fetch_add(1, Ordering::Relaxed);
                        let rt = body["refresh_token"].as_str().map(str::to_string);
                        *last_refresh.lock().expect("lock") = rt;
                    }
                    _ => {
                        counts.writes_failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    let reader = {
        let (counts, stop, token) = (counts.clone(), stop.clone(), token.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(port, "GET", "/api/users", Some(&token), None).await {
                    Some((200, body)) if body.to_string().contains("ann@acme.test") => {
                        counts.reads_ok.fetch_add(1, Ordering::Relaxed)
                    }
                    other => {
                        eprintln!("a read failed: {other:?}");
                        counts.reads_failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let wait_for = |what: &'static str, n: u64, f: fn(&Counts) -> u64| {
        let counts = counts.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while f(&counts) < n {
                assert!(Instant::now() < deadline, "{what}: fewer than {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("writes before the stop", 5, |c| {
        c.writes_ok.load(Ordering::Relaxed)
    })
    .await;

    // Switchover: stop the primary cleanly (its WAL reaches the standby first), then promote.
    let stopped = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .expect("stop");
    let acked_before_promote = counts.writes_ok.load(Ordering::Relaxed);
    let refresh_before = last_refresh
        .lock()
        .expect("lock")
        .clone()
        .expect("a refresh");
    // With the primary away, the backend stays ready ("degraded": the replica answers) and token reads
    // keep being served from the replica.
    let readyz = call(port, "GET", "/readyz", None, None).await;
    assert_eq!(
        readyz
            .as_ref()
            .map(|(s, b)| (*s, b["status"].clone(), b["replica"].clone())),
        Some((200, "degraded".into(), true.into())),
        "readyz with the primary stopped: {readyz:?}"
    );
    let reads_at_stop = counts.reads_ok.load(Ordering::Relaxed);
    wait_for("reads while the primary is away", reads_at_stop + 5, |c| {
        c.reads_ok.load(Ordering::Relaxed)
    })
    .await;
    let switch_started = Instant::now();
    let out = as_postgres(
        &PrivatePg::bin_dir().join("pg_ctl"),
        &["-D", &standby.data(), "-w", "-t", "60", "promote"],
    );
    assert!(
        out.status.success(),
        "pg_ctl promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "writes after the promotion",
        acked_before_promote + 5,
        |c| c.writes_ok.load(Ordering::Relaxed),
    )
    .await;
    let writes_back_after = switch_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    reader.await.expect("reader");

    // The same process did it.
    assert!(
        backend.try_wait().expect("wait").is_none(),
        "the backend exited"
    );
    assert_eq!(backend.id(), pid);
    let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        stderr.contains("database primary moved"),
        "the backend did not say it moved: {stderr}"
    );

    // Every acknowledged write is on the new primary: one refresh token per acknowledged login, and the
    // last one acknowledged before the stop still refreshes.
    let acked = counts.writes_ok.load(Ordering::Relaxed) + 1; // + the first login
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE user_id = $1")
        .bind(ann)
        .fetch_one(&standby_owner)
        .await
        .expect("count");
    assert!(
        stored as u64 >= acked,
        "{acked} logins acknowledged, {stored} refresh tokens stored"
    );
    let refreshed = call(
        port,
        "POST",
        "/api/auth/refresh",
        None,
        Some(serde_json::json!({ "refresh_token": refresh_before })),
    )
    .await;
    assert_eq!(
        refreshed.map(|r| r.0),
        Some(200),
        "the last refresh token acknowledged before the stop"
    );
    let reads_ok = counts.reads_ok.load(Ordering::Relaxed);
    let reads_failed = counts.reads_failed.load(Ordering::Relaxed);
    eprintln!(
        "failover: {acked} writes acknowledged ({} failed during the switch), writes back {writes_back_after:?} \
         after the promotion began; {reads_ok} reads, {reads_failed} failed",
        counts.writes_failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        reads_failed, 0,
        "reads from the replica failed during the switch"
    );
    assert!(reads_ok > 0);
    let _ = backend.kill();
    let _ = backend.wait();
    drop(stopped);
}
