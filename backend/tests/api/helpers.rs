//! `TestApp`: a fresh database, migrated, the service on 127.0.0.1:0, and a small JSON client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backend::app::{serve, AppState};
use backend::config::{Config, StorageConfig};
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

pub struct TestApp {
    pub addr: SocketAddr,
    pub db_name: String,
    /// Connected as the application role (row-level security applies).
    pub app_pool: PgPool,
    /// Connected as the owner/superuser (for set-up and inspection only).
    pub owner_pool: PgPool,
    pub ip: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
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
            database_read_url: None,
            redis_url: redis_url(),
            jwt_secret: b"test-secret-test-secret-test-secret!".to_vec(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            internal_listen: None,
            storage: StorageConfig::Local {
                dir: std::env::temp_dir(),
            },
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
            max_file_bytes: 1024 * 1024,
            migrate_on_start: false,
        };
        let state: Arc<AppState> = AppState::new(&config).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, false, async move {
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
            shutdown: Some(tx),
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
            .header("x-forwarded-for", &self.ip)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let resp = sender
            .send_request(req.body(Full::new(body)).expect("request"))
            .await
            .expect("send");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status.as_u16(), json, parts.headers)
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
