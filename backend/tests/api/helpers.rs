//! `TestApp`: a fresh database, migrated, the service on 127.0.0.1:0, and a small JSON client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backend::app::serve;
use backend::config::{Config, StorageConfig};
use backend::state::AppState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Superuser URL of the test cluster (trust auth on loopback).
pub fn admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub const APP_ROLE: &str = "aggios_app_test";
pub const APP_PASSWORD: &str = "app-test-password";
pub const PASSWORD: &str = "correct horse battery";
/// The backend's HS256 key in tests (the end-to-end test gives the gateway the same one).
pub const TEST_JWT_SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The internal listener (`BACKEND_INTERNAL_LISTEN`).
    pub internal_addr: SocketAddr,
    pub db_name: String,
    /// Connected as the application role (row-level security applies).
    pub app_pool: PgPool,
    /// Connected as the owner/superuser (for set-up and inspection only).
    pub owner_pool: PgPool,
    pub ip: String,
    /// The service's state (its in-flight count, for conditions to wait on).
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The local storage directory (`STORAGE_DIR`) when no S3 is configured.
    pub files: tempfile::TempDir,
}

/// The owner's URL of test database `db`.
pub fn owner_url(db: &str) -> String {
    db_url("owner", db)
}

/// The application role's URL of test database `db`.
pub fn app_url(db: &str) -> String {
    db_url(APP_ROLE, db)
}

fn db_url(user: &str, db: &str) -> String {
    let base = url::Url::parse(&admin_url()).expect("admin url");
    let host = base.host_str().unwrap_or("127.0.0.1");
    let port = base.port().unwrap_or(5432);
    if user == APP_ROLE {
        format!("postgres://{APP_ROLE}:{APP_PASSWORD}@{host}:{port}/{db}")
    } else {
        format!("postgres://{}@{host}:{port}/{db}", base.username())
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with_storage(None).await
    }

    /// `storage`: `None` for a local directory of this test's own, or an S3 configuration.
    pub async fn spawn_with_storage(storage: Option<StorageConfig>) -> TestApp {
        Self::spawn_with(storage, None).await
    }

    /// Also with a read replica URL (`DATABASE_READ_URL`).
    pub async fn spawn_with(storage: Option<StorageConfig>, read_url: Option<String>) -> TestApp {
        Self::spawn_full(
            storage,
            read_url,
            redis_url(),
            None,
            None,
            Default::default(),
        )
        .await
    }

    /// With these OAuth settings (token lifetimes, token-endpoint limits).
    pub async fn spawn_with_oauth(oauth: backend::config::OAuthConfig) -> TestApp {
        Self::spawn_full(None, None, redis_url(), None, None, oauth).await
    }

    /// With fault injection: a request for exactly `path` panics in its handler.
    pub async fn spawn_with_fault(path: &str) -> TestApp {
        Self::spawn_full(
            None,
            None,
            redis_url(),
            Some(path.to_string()),
            None,
            Default::default(),
        )
        .await
    }

    /// With Redis at `redis` (e.g. a closed port, to test an outage).
    pub async fn spawn_with_redis(redis: String) -> TestApp {
        Self::spawn_full(None, None, redis, None, None, Default::default()).await
    }

    /// With the slow-statement log at `threshold` (`DB_SLOW_QUERY_MS`).
    pub async fn spawn_with_slow_query_log(threshold: std::time::Duration) -> TestApp {
        Self::spawn_full(
            None,
            None,
            redis_url(),
            None,
            Some(threshold),
            Default::default(),
        )
        .await
    }

    async fn spawn_full(
        storage: Option<StorageConfig>,
        read_url: Option<String>,
        redis: String,
        fault_panic_path: Option<String>,
        db_slow_query: Option<std::time::Duration>,
        oauth: backend::config::OAuthConfig,
    ) -> TestApp {
        let files_dir = tempfile::tempdir().expect("tempdir");
        let db_name = format!("aggios_t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url())
            .await
            .expect("connect as Postgres superuser");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let owner_url = db_url("owner", &db_name);
        let app_url = db_url(APP_ROLE, &db_name);
        backend::db::migrate(&owner_url, &app_url)
            .await
            .expect("migrate");
        let config = Config {
            database_url: app_url.clone(),
            database_owner_url: owner_url.clone(),
            database_read_url: read_url,
            redis_url: redis,
            jwt_secret: TEST_JWT_SECRET.to_vec(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            internal_listen: None,
            storage: storage.unwrap_or_else(|| StorageConfig::Local {
                dir: files_dir.path().to_path_buf(),
            }),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
            max_file_bytes: 1024 * 1024,
            trusted_gateways: vec!["127.0.0.0/8".parse().expect("net")],
            inline_types: backend::config::DEFAULT_INLINE_TYPES
                .split(',')
                .map(str::to_string)
                .collect(),
            migrate_on_start: false,
            fault_panic_path,
            base_domains: vec!["aggios.app".into(), "aggios.localhost".into()],
            default_plan: "free".into(),
            usage_flush: std::time::Duration::from_secs(5),
            shutdown_drain: std::time::Duration::ZERO,
            oauth,
            db_slow_query: db_slow_query.unwrap_or(std::time::Duration::from_millis(
                backend::config::DEFAULT_DB_SLOW_QUERY_MS,
            )),
        };
        let state: Arc<AppState> = AppState::new(&config).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let internal_addr = internal.local_addr().expect("addr");
        tokio::spawn(serve(internal, state.clone(), true, std::future::pending()));
        tokio::spawn(serve(listener, state.clone(), false, async move {
            let _ = rx.await;
        }));
        let app_pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&app_url)
            .await
            .expect("app pool");
        let owner_pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&owner_url)
            .await
            .expect("owner pool");
        // A client address of our own, so that per-IP login throttling never mixes tests.
        let ip = format!("10.{}.{}.{}", fastrand_u8(), fastrand_u8(), fastrand_u8());
        TestApp {
            addr,
            db_name,
            app_pool,
            owner_pool,
            ip,
            state,
            shutdown: Some(tx),
            files: files_dir,
            internal_addr,
        }
    }

    /// Stops accepting connections; requests in flight still finish.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Creates a tenant and returns its id.
    pub async fn tenant(&self, subdomain: &str) -> uuid::Uuid {
        backend::db::tenants::create(
            &self.owner_pool,
            &format!("{subdomain} Inc"),
            subdomain,
            None,
        )
        .await
        .expect("tenant")
        .id
    }

    /// Creates a user with [`PASSWORD`] through the same code path as `backend user create`.
    pub async fn user(&self, tenant: uuid::Uuid, email: &str, role: &str) -> uuid::Uuid {
        let hash = backend::auth::hash_password(PASSWORD).expect("hash");
        let mut tx = backend::db::tenant_tx(&self.app_pool, tenant)
            .await
            .expect("tx");
        let u = backend::db::users::create(
            &mut tx,
            &backend::db::users::NewUser {
                tenant_id: tenant,
                email,
                password_hash: &hash,
                first_name: "",
                last_name: "",
                role,
            },
        )
        .await
        .expect("user");
        tx.commit().await.expect("commit");
        u.id
    }

    /// Sends a JSON request as the gateway would forward it for `host`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        host: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, http::HeaderMap) {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let (status, bytes, headers) = self
            .call_raw(method, path, host, token, "application/json", body)
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        )
    }

    /// `GET path` on `host`, with a bearer token or none.
    pub async fn get(
        &self,
        path: &str,
        host: &str,
        token: Option<&str>,
    ) -> (u16, Value, http::HeaderMap) {
        self.call("GET", path, host, token, None).await
    }

    /// `POST path` on `host` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        host: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value, http::HeaderMap) {
        self.call("POST", path, host, token, Some(body)).await
    }

    /// Creates tenant `subdomain` with one user `email` of `role`; returns the tenant's id.
    pub async fn tenant_with_user(&self, subdomain: &str, email: &str, role: &str) -> uuid::Uuid {
        let tenant = self.tenant(subdomain).await;
        self.user(tenant, email, role).await;
        tenant
    }

    /// Sends raw bytes with `content_type`; returns the raw response body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        host: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> (u16, Bytes, http::HeaderMap) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        self.call_with(method, path, host, &headers, content_type, body)
            .await
    }

    /// Sends raw bytes with `content_type` and these extra header fields.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: Bytes,
    ) -> (u16, Bytes, http::HeaderMap) {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "backend.internal")
            .header("x-forwarded-host", host)
            .header("x-aggios-client-ip", &self.ip);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).expect("request"))
            .await
            .expect("send");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (parts.status.as_u16(), bytes, parts.headers)
    }

    /// One login attempt with `password`, whatever its outcome.
    pub async fn try_login(
        &self,
        host: &str,
        email: &str,
        password: &str,
    ) -> (u16, serde_json::Value, http::HeaderMap) {
        self.post(
            "/api/auth/login",
            host,
            None,
            serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    /// One refresh with `refresh_token`, whatever its outcome.
    pub async fn refresh(&self, host: &str, refresh_token: &str) -> (u16, serde_json::Value) {
        let (status, body, _) = self
            .post(
                "/api/auth/refresh",
                host,
                None,
                serde_json::json!({ "refresh_token": refresh_token }),
            )
            .await;
        (status, body)
    }

    /// How many audit-log rows carry `action` (read as the owner, past row-level security).
    pub async fn audit_count(&self, action: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
            .bind(action)
            .fetch_one(&self.owner_pool)
            .await
            .expect("audit_log")
    }

    /// Logs in; returns (access, refresh).
    pub async fn login(&self, host: &str, email: &str) -> (String, String) {
        let (status, body, _) = self
            .call(
                "POST",
                "/api/auth/login",
                host,
                None,
                Some(serde_json::json!({ "email": email, "password": PASSWORD })),
            )
            .await;
        assert_eq!(status, 200, "login {email}@{host}: {body}");
        (
            body["access_token"].as_str().expect("access").to_string(),
            body["refresh_token"].as_str().expect("refresh").to_string(),
        )
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The database is dropped by a detached thread so that a failing test still cleans up.
        let name = self.db_name.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(admin) = PgPoolOptions::new()
                        .max_connections(1)
                        .connect(&admin_url())
                        .await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&admin)
                                .await;
                    }
                });
            }
        });
    }
}

fn fastrand_u8() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

/// A real S3-compatible server (s3s-fs) on a free port, with a bucket `aggios`; killed on drop.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    child: std::process::Child,
}

pub const S3_ACCESS_KEY: &str = "AKIAAGGIOSTEST";
pub const S3_SECRET_KEY: &str = "aggios-test-secret-key";

impl S3Server {
    pub async fn start() -> S3Server {
        let bin = std::env::var("S3S_FS_BIN").ok().or_else(|| {
            let home = std::env::var("HOME").ok()?;
            let p = std::path::Path::new(&home).join(".cargo/bin/s3s-fs");
            p.exists().then(|| p.display().to_string())
        });
        let bin = bin.expect("s3s-fs not found: scripts/test.sh installs it (cargo install s3s-fs@0.14.1 --locked --features binary)");
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("aggios")).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = std::process::Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "s3s-fs did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        S3Server { port, root, child }
    }

    pub fn config(&self) -> StorageConfig {
        StorageConfig::S3 {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            bucket: "aggios".into(),
            access_key_id: S3_ACCESS_KEY.into(),
            secret_access_key: S3_SECRET_KEY.into(),
            region: "us-east-1".into(),
        }
    }

    /// A credential-less GET of `url` (a presigned URL).
    pub async fn plain_get(&self, url: &str) -> Vec<u8> {
        let u = url::Url::parse(url).expect("url");
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        let req = http::Request::builder()
            .uri(target)
            .header("host", format!("127.0.0.1:{}", self.port))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        assert_eq!(resp.status(), 200, "presigned GET refused");
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local HTTP receiver on a free port (a stand-in for a collector: OTLP, Sentry): every request's path
/// and body go to `on_request`, and the answer is `200 {}`.
pub async fn http_sink(on_request: impl Fn(String, Bytes) + Send + Sync + 'static) -> u16 {
    let on_request = Arc::new(on_request);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let on_request = on_request.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let on_request = on_request.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            on_request(path, body);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}
