//! Tenant plans: platform administration, the backend's own quotas, usage, and — through two real
//! gateway replicas in front of this backend — live plan changes, per-tenant limits, the monthly quota
//! and suspension at the edge.
//!
//! Tenant names carry a random suffix: Redis (policy cache, monthly counters) is shared by every test
//! and every run.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::e2e::{free_port, gateway_bin};
use crate::helpers::*;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn host(sub: &str) -> String {
    format!("{sub}.aggios.app")
}

/// A platform admin's token (a user of a tenant of its own).
async fn platform_admin(app: &TestApp) -> String {
    let sub = unique("plat");
    app.tenant_with_user(&sub, "root@plat.test", "platform_admin")
        .await;
    app.login(&host(&sub), "root@plat.test").await.0
}

/// Creates plan `name` with `fields` over a small base.
async fn create_plan(app: &TestApp, admin: &str, name: &str, fields: Value) {
    let mut body = json!({
        "name": name, "requests_per_second": 1000, "burst": 1000, "concurrency_weight": 1,
        "monthly_requests": 0, "storage_bytes": 1_000_000, "max_upload_bytes": 100_000,
        "max_api_keys": 10, "max_users": 10
    });
    for (k, v) in fields.as_object().expect("object") {
        body[k] = v.clone();
    }
    let (status, resp, _) = app
        .post("/api/plans", "api.aggios.app", Some(admin), body)
        .await;
    assert_eq!(status, 201, "create plan {name}: {resp}");
}

/// A fresh backend, a platform admin's token, and plans `plans` (name, fields over a small base).
async fn app_with_plans(plans: &[(&str, Value)]) -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let root = platform_admin(&app).await;
    for (name, fields) in plans {
        create_plan(&app, &root, name, fields.clone()).await;
    }
    (app, root)
}

async fn set_plan(app: &TestApp, admin: &str, tenant: &str, plan: &str, overrides: Value) -> Value {
    let (status, resp, _) = app
        .call(
            "PUT",
            &format!("/api/tenants/{tenant}/plan"),
            "api.aggios.app",
            Some(admin),
            Some(json!({ "plan": plan, "overrides": overrides })),
        )
        .await;
    assert_eq!(status, 200, "set plan {plan} of {tenant}: {resp}");
    resp
}

/// `GET path` at `addr` with `host` and, when given, a bearer token: status, headers, body (raw).
async fn http_get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, http::HeaderMap, bytes::Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(path).header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .ok()?
        .to_bytes();
    Some((parts.status.as_u16(), parts.headers, body))
}

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET` on the internal listener.
async fn internal_get(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, _, body) = http_get(app.internal_addr, "internal", path, None)
        .await
        .expect("internal listener");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn field_of(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

#[tokio::test]
async fn plans_are_administered_by_platform_admins_and_bad_fields_are_named() {
    let app = TestApp::spawn().await;
    let root = platform_admin(&app).await;
    let sub = unique("acme");
    let tenant = app.tenant_with_user(&sub, "boss@acme.test", "admin").await;
    let boss = app.login(&host(&sub), "boss@acme.test").await.0;

    // Only platform admins, whatever a tenant admin sends.
    let (status, _, _) = app.get("/api/plans", "api.aggios.app", Some(&boss)).await;
    assert_eq!(status, 403);
    let (status, _, _) = app
        .post(
            &format!("/api/tenants/{tenant}/suspend"),
            "api.aggios.app",
            Some(&boss),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "a tenant admin cannot suspend");

    let (status, body, _) = app.get("/api/plans", "api.aggios.app", Some(&root)).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for seeded in ["free", "pro", "enterprise"] {
        assert!(names.contains(&seeded), "{names:?}");
    }
    assert_eq!(body["default_plan"], "free");

    // Bad input: 400 with the field named.
    let bad = |fields: Value| {
        let mut b = json!({
            "name": "gold", "requests_per_second": 10, "burst": 10, "concurrency_weight": 1,
            "monthly_requests": 0, "storage_bytes": 1, "max_upload_bytes": 1, "max_api_keys": 1,
            "max_users": 1
        });
        for (k, v) in fields.as_object().expect("object") {
            if v.is_null() {
                b.as_object_mut().expect("object").remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    for (body, field) in [
        (bad(json!({"burst": -1})), "burst"),
        (bad(json!({"max_users": "many"})), "max_users"),
        (bad(json!({"colour": 3})), "colour"),
        (bad(json!({"storage_bytes": null})), "storage_bytes"),
        (bad(json!({"name": "Gold Plan"})), "name"),
    ] {
        let (status, resp, _) = app
            .post("/api/plans", "api.aggios.app", Some(&root), body)
            .await;
        assert_eq!((status, field_of(&resp)), (400, field), "{resp}");
        assert_eq!(resp["error"]["code"], "invalid_field");
    }
    create_plan(&app, &root, "gold", json!({"burst": 5})).await;
    let (status, resp, _) = app
        .post("/api/plans", "api.aggios.app", Some(&root), bad(json!({})))
        .await;
    assert_eq!(status, 409, "a plan name is taken once: {resp}");

    let patch = |name: &str, body: Value| {
        let app = &app;
        let root = root.clone();
        let path = format!("/api/plans/{name}");
        async move {
            app.call("PATCH", &path, "api.aggios.app", Some(&root), Some(body))
                .await
        }
    };
    let (status, resp, _) = patch("gold", json!({"max_users": -1})).await;
    assert_eq!((status, field_of(&resp)), (400, "max_users"), "{resp}");
    let (status, _, _) = patch("nope", json!({"burst": 1})).await;
    assert_eq!(status, 404);
    let (status, resp, _) = patch("gold", json!({"burst": 7})).await;
    assert_eq!(
        (status, resp["plan"]["burst"].as_i64()),
        (200, Some(7)),
        "{resp}"
    );

    let put = |body: Value| {
        let app = &app;
        let root = root.clone();
        async move {
            app.call(
                "PUT",
                &format!("/api/tenants/{tenant}/plan"),
                "api.aggios.app",
                Some(&root),
                Some(body),
            )
            .await
        }
    };
    for (body, field) in [
        (json!({"plan": "nope"}), "plan"),
        (json!({"plan": 5}), "plan"),
        (
            json!({"plan": "gold", "overrides": {"foo": 1}}),
            "overrides.foo",
        ),
        (
            json!({"plan": "gold", "overrides": {"burst": -5}}),
            "overrides.burst",
        ),
        (json!({"plan": "gold", "extra": true}), "extra"),
    ] {
        let (status, resp, _) = put(body).await;
        assert_eq!((status, field_of(&resp)), (400, field), "{resp}");
    }
    let before: Value = internal_get(&app, &format!("/internal/tenant-policy/{sub}"))
        .await
        .1;
    assert_eq!(before["plan"], "free", "no plan of its own: the default");
    let resp = set_plan(
        &app,
        &root,
        &tenant.to_string(),
        "gold",
        json!({"burst": 99}),
    )
    .await;
    assert_eq!(resp["policy"]["plan"], "gold");
    assert_eq!(resp["policy"]["burst"], 99, "the override wins");
    let (status, policy) = internal_get(&app, &format!("/internal/tenant-policy/{sub}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (policy["plan"].as_str(), policy["burst"].as_u64()),
        (Some("gold"), Some(99))
    );
    assert_eq!(policy["requests_per_second"], 1000, "the plan's own field");
    assert!(
        policy["version"].as_i64() > before["version"].as_i64(),
        "{policy}"
    );
    let (status, _) = internal_get(&app, "/internal/tenant-policy/no-such-tenant").await;
    assert_eq!(status, 404);
    let (status, _) = internal_get(&app, "/internal/tenant-policy/..%2f").await;
    assert_eq!(status, 404);

    // Suspension: refused by the backend too (defence in depth), then resumed; all audited.
    let (status, _, _) = app
        .post(
            &format!("/api/tenants/{sub}/suspend"),
            "api.aggios.app",
            Some(&root),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "by subdomain too");
    let (status, resp, _) = app.get("/api/users/me", &host(&sub), Some(&boss)).await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (403, Some("tenant_suspended"))
    );
    assert_eq!(
        internal_get(&app, &format!("/internal/tenant-policy/{sub}"))
            .await
            .1["suspended"],
        true
    );
    let (status, _, _) = app
        .post(
            &format!("/api/tenants/{tenant}/resume"),
            "api.aggios.app",
            Some(&root),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = app.get("/api/users/me", &host(&sub), Some(&boss)).await;
    assert_eq!(status, 200);
    for action in [
        "plan_created",
        "plan_updated",
        "tenant_plan_set",
        "tenant_suspended",
        "tenant_resumed",
    ] {
        assert_eq!(app.audit_count(action).await, 1, "{action}");
    }
}

#[tokio::test]
async fn a_plan_caps_users_and_api_keys_with_plan_limit() {
    let (app, root) = app_with_plans(&[("tiny", json!({"max_users": 2, "max_api_keys": 1}))]).await;
    let sub = unique("caps");
    let tenant = app.tenant_with_user(&sub, "boss@caps.test", "admin").await;
    set_plan(&app, &root, &tenant.to_string(), "tiny", json!({})).await;
    let boss = app.login(&host(&sub), "boss@caps.test").await.0;
    let new_user = |n: u32| json!({"email": format!("u{n}@caps.test"), "password": PASSWORD, "role": "member"});
    let (status, _, _) = app
        .post("/api/users", &host(&sub), Some(&boss), new_user(1))
        .await;
    assert_eq!(status, 201);
    let (status, resp, _) = app
        .post("/api/users", &host(&sub), Some(&boss), new_user(2))
        .await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (409, Some("plan_limit")),
        "{resp}"
    );
    let (status, key, _) = app
        .post(
            "/api/api-keys",
            &host(&sub),
            Some(&boss),
            json!({"name": "erp"}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (status, resp, _) = app
        .post(
            "/api/api-keys",
            &host(&sub),
            Some(&boss),
            json!({"name": "crm"}),
        )
        .await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (409, Some("plan_limit"))
    );
    // A revoked key frees its place; an upgrade raises the cap at once.
    let id = key["api_key"]["id"].as_str().expect("id");
    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/api-keys/{id}"),
            &host(&sub),
            Some(&boss),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = app
        .post(
            "/api/api-keys",
            &host(&sub),
            Some(&boss),
            json!({"name": "crm"}),
        )
        .await;
    assert_eq!(status, 201);
    set_plan(
        &app,
        &root,
        &tenant.to_string(),
        "tiny",
        json!({"max_users": 3}),
    )
    .await;
    let (status, u2, _) = app
        .post("/api/users", &host(&sub), Some(&boss), new_user(2))
        .await;
    assert_eq!(status, 201, "the override raised the cap");
    // A deactivated user frees a place; taking it again is refused while the plan is full.
    let u2 = u2["user"]["id"].as_str().expect("id").to_string();
    let patch = |active: bool| {
        let app = &app;
        let boss = boss.clone();
        let path = format!("/api/users/{u2}");
        let h = host(&sub);
        async move {
            app.call(
                "PATCH",
                &path,
                &h,
                Some(&boss),
                Some(json!({ "is_active": active })),
            )
            .await
        }
    };
    assert_eq!(patch(false).await.0, 200);
    let (status, _, _) = app
        .post("/api/users", &host(&sub), Some(&boss), new_user(3))
        .await;
    assert_eq!(status, 201, "the deactivated user's place");
    let (status, resp, _) = patch(true).await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (409, Some("plan_limit")),
        "{resp}"
    );
}

#[tokio::test]
async fn concurrent_uploads_stop_exactly_at_the_storage_quota() {
    let (app, root) = app_with_plans(&[(
        "small",
        json!({"storage_bytes": 10_000, "max_upload_bytes": 4_000}),
    )])
    .await;
    let sub = unique("store");
    let tenant = app.tenant_with_user(&sub, "boss@store.test", "admin").await;
    set_plan(&app, &root, &tenant.to_string(), "small", json!({})).await;
    let boss = app.login(&host(&sub), "boss@store.test").await.0;
    let put = |path: String, size: usize| {
        let app = &app;
        let boss = boss.clone();
        let h = host(&sub);
        async move {
            let (status, body, _) = app
                .call_raw(
                    "PUT",
                    &path,
                    &h,
                    Some(&boss),
                    "application/octet-stream",
                    bytes::Bytes::from(vec![b'x'; size]),
                )
                .await;
            (status, body)
        }
    };
    let (status, _) = put("/api/files/big.bin".into(), 4_001).await;
    assert_eq!(status, 413, "over the plan's upload size");
    // 15 uploads of 1 000 bytes at once into a 10 000-byte quota: exactly 10 are stored.
    let results =
        futures_util::future::join_all((0..15).map(|i| put(format!("/api/files/f{i}.bin"), 1_000)))
            .await;
    let stored = results.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<&(u16, bytes::Bytes)> = results.iter().filter(|(s, _)| *s != 201).collect();
    assert_eq!(
        stored,
        10,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (status, body) in refused {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        assert_eq!(
            (*status, body["error"]["code"].as_str()),
            (409, Some("plan_limit")),
            "{body}"
        );
    }
    let (used, reserved): (i64, i64) =
        sqlx::query_as("SELECT used_bytes, reserved_bytes FROM storage_usage WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&app.owner_pool)
            .await
            .expect("storage_usage");
    assert_eq!((used, reserved), (10_000, 0), "every reservation settled");
    let (status, _, _) = app.get("/api/tenant/usage", &host(&sub), Some(&boss)).await;
    assert_eq!(status, 200);
    // A delete frees its bytes; a downgrade below use refuses new writes and deletes nothing.
    let (status, _, _) = app
        .call(
            "DELETE",
            "/api/files/f0.bin",
            &host(&sub),
            Some(&boss),
            None,
        )
        .await
        .clone();
    let status = if status == 200 {
        status
    } else {
        // f0 may be among the refused; delete any stored one.
        let mut s = status;
        for i in 1..15 {
            s = app
                .call(
                    "DELETE",
                    &format!("/api/files/f{i}.bin"),
                    &host(&sub),
                    Some(&boss),
                    None,
                )
                .await
                .0;
            if s == 200 {
                break;
            }
        }
        s
    };
    assert_eq!(status, 200);
    let (status, _) = put("/api/files/again.bin".into(), 1_000).await;
    assert_eq!(status, 201, "the deleted file's bytes are free again");
    let (status, _, _) = app
        .call(
            "PATCH",
            "/api/plans/small",
            "api.aggios.app",
            Some(&root),
            Some(json!({"storage_bytes": 5_000})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = put("/api/files/more.bin".into(), 10).await;
    assert_eq!(status, 409, "over the new quota: no new writes");
    let (status, listed, _) = app.get("/api/files", &host(&sub), Some(&boss)).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["files"].as_array().map(Vec::len),
        Some(10),
        "nothing deleted"
    );
    // Files stored before quotas were counted (no figures yet) are counted from storage first.
    sqlx::query("DELETE FROM storage_usage WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&app.owner_pool)
        .await
        .expect("forget the figures");
    let (status, _) = put("/api/files/after.bin".into(), 10).await;
    assert_eq!(status, 409, "the 10 000 bytes already stored count");
    let used: i64 = sqlx::query_scalar("SELECT used_bytes FROM storage_usage WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.owner_pool)
        .await
        .expect("storage_usage");
    assert_eq!(used, 10_000);
}

#[tokio::test]
async fn usage_is_flushed_to_postgres_and_restored_after_redis_loses_it() {
    let app = TestApp::spawn().await;
    let sub = unique("usage");
    let tenant = app.tenant_with_user(&sub, "boss@usage.test", "admin").await;
    let boss = app.login(&host(&sub), "boss@usage.test").await.0;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let (month, _) = contracts::plans::month_of(now);
    let key = contracts::redis_keys::monthly_requests(&sub, &month);
    let mut redis = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::AsyncCommands::set(&mut redis, &key, 42)
        .await
        .expect("set");
    let flushed = backend::usage::flush_once(&app.state).await.expect("flush");
    assert!(flushed.written >= 1, "{flushed:?}");
    let in_pg: i64 = sqlx::query_scalar("SELECT requests FROM usage WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.owner_pool)
        .await
        .expect("usage row");
    assert_eq!(in_pg, 42);
    // Redis loses the counter (a restart without persistence): the next flush puts it back.
    let _: () = redis::AsyncCommands::del(&mut redis, &key)
        .await
        .expect("del");
    let flushed = backend::usage::flush_once(&app.state).await.expect("flush");
    assert!(flushed.restored >= 1, "{flushed:?}");
    let back: Option<i64> = redis::AsyncCommands::get(&mut redis, &key)
        .await
        .expect("get");
    assert_eq!(back, Some(42));
    let ttl: i64 = redis::AsyncCommands::ttl(&mut redis, &key)
        .await
        .expect("ttl");
    assert!(ttl > 0, "a restored counter expires like the gateway's");
    let (status, usage, _) = app.get("/api/tenant/usage", &host(&sub), Some(&boss)).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["requests"]["used"], 42);
    assert_eq!(usage["requests"]["limit"], 100_000, "the free plan's quota");
    assert_eq!(usage["plan"], "free");
    let _: () = redis::AsyncCommands::del(&mut redis, &key)
        .await
        .expect("cleanup");
}

// ---------------------------------------------------------------------------------------------------
// Through the gateway.

struct Gateway {
    child: std::process::Child,
    port: u16,
    admin: u16,
    config: std::path::PathBuf,
    redis: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_config(
    app: &TestApp,
    lookup: std::net::SocketAddr,
    port: u16,
    admin: u16,
    default_rps: u64,
) -> String {
    format!(
        r#"[entrypoints]
http = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[tenancy]
base_domains = ["aggios.app"]

[auth.jwt]
secret_env = "E2E_JWT_SECRET"

[redis]
url_env = "E2E_REDIS_URL"
timeout = "300ms"

[plans]
lookup_url = "http://{internal}/internal/tenant-policy/{{tenant}}"
# Long on purpose: a change seen within a second came by the invalidation message, not by expiry.
cache_ttl = "60s"
expected_replicas = 1
default = {{ plan = "fallback", requests_per_second = {default_rps}, burst = 1 }}

[[upstreams]]
name = "backend"
servers = ["{backend}"]

[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
on_store_error = "open"
rate_limits = ["plan"]
upstream = "backend"

[[routes]]
name = "public"
hosts = ["*.aggios.app"]
path_prefix = "/public"
rate_limits = ["plan"]
upstream = "backend"
"#,
        internal = lookup,
        backend = app.addr,
    )
}

async fn start_gateway_with(app: &TestApp, redis: &str, default_rps: u64) -> Gateway {
    start_gateway_asking(app, app.internal_addr, redis, default_rps).await
}

/// A gateway asking `lookup` for tenants' policies.
async fn start_gateway_asking(
    app: &TestApp,
    lookup: std::net::SocketAddr,
    redis: &str,
    default_rps: u64,
) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &config,
        gateway_config(app, lookup, port, admin, default_rps),
    )
    .expect("config");
    let mut gw = Gateway {
        child: spawn_gateway(&config, redis),
        port,
        admin,
        config,
        redis: redis.to_string(),
        _dir: dir,
    };
    wait_up(&mut gw).await;
    gw
}

fn spawn_gateway(config: &std::path::Path, redis: &str) -> std::process::Child {
    std::process::Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(config)
        .env(
            "E2E_JWT_SECRET",
            std::str::from_utf8(TEST_JWT_SECRET).expect("utf8"),
        )
        .env("E2E_REDIS_URL", redis)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gateway")
}

async fn wait_up(gw: &mut Gateway) {
    let start = Instant::now();
    // Up, and following policy changes (the subscription is made in the background).
    loop {
        let m = admin_metrics(gw).await;
        if m.contains("gateway_plan_changes_subscribed 1") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Gateway {
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_gateway(&self.config, &self.redis);
        wait_up(self).await;
    }
}

async fn admin_metrics(gw: &Gateway) -> String {
    let h = format!("127.0.0.1:{}", gw.admin);
    match http_get(loopback(gw.admin), &h, "/metrics", None).await {
        Some((_, _, body)) => String::from_utf8_lossy(&body).into_owned(),
        None => String::new(),
    }
}

/// `GET /api/users/me` on `sub`'s host through `gw`: status, error code, `RateLimit-Policy`,
/// `Retry-After`.
async fn me(gw: &Gateway, sub: &str, token: &str) -> (u16, String, String, u64) {
    let (status, headers, body) =
        http_get(loopback(gw.port), &host(sub), "/api/users/me", Some(token))
            .await
            .expect("gateway");
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    (
        status,
        code,
        header("ratelimit-policy"),
        header("retry-after").parse().unwrap_or(0),
    )
}

/// A tenant with one admin, on `plan`; its token.
async fn tenant_on(app: &TestApp, root: &str, prefix: &str, plan: &str) -> (String, String) {
    let sub = unique(prefix);
    let id = app.tenant_with_user(&sub, "u@t.test", "admin").await;
    set_plan(app, root, &id.to_string(), plan, json!({})).await;
    let token = app.login(&host(&sub), "u@t.test").await.0;
    (sub, token)
}

#[tokio::test]
async fn plans_live_at_the_edge_on_two_replicas() {
    let (app, root) = app_with_plans(&[
        ("tiny", json!({"requests_per_second": 1, "burst": 2})),
        ("roomy", json!({"requests_per_second": 1, "burst": 7})),
        ("quota10", json!({"monthly_requests": 10})),
    ])
    .await;
    let (a, token_a) = tenant_on(&app, &root, "pa", "tiny").await;
    let (b, token_b) = tenant_on(&app, &root, "pb", "roomy").await;
    let (c, token_c) = tenant_on(&app, &root, "pc", "quota10").await;
    let mut g1 = start_gateway_with(&app, &redis_url(), 100).await;
    let g2 = start_gateway_with(&app, &redis_url(), 100).await;

    // Two tenants on different plans, the same route, both replicas: each its own limit, shared by
    // the replicas (capacity = rate + burst: 3 and 8, plus at most one refill during the burst).
    for (sub, token, plan, capacity) in [(&a, &token_a, "tiny", 3), (&b, &token_b, "roomy", 8)] {
        let mut ok = 0;
        let mut refusal = None;
        for i in 0..14 {
            let gw = if i % 2 == 0 { &g1 } else { &g2 };
            let (status, code, policy, _) = me(gw, sub, token).await;
            assert!(
                policy.starts_with(&format!("\"{plan}\";q=1;w=1")),
                "{policy}"
            );
            match status {
                200 => ok += 1,
                429 => refusal = Some(code),
                s => panic!("unexpected {s} {code}"),
            }
        }
        assert!(
            (capacity..=capacity + 1).contains(&ok),
            "{plan}: {ok} allowed"
        );
        assert_eq!(refusal.as_deref(), Some("rate_limited"));
    }

    // A plan change reaches both replicas without a reload, well before the 60 s cache TTL.
    let mut seen = Vec::new();
    for (round, plan) in ["roomy", "tiny", "roomy", "tiny", "roomy"]
        .iter()
        .enumerate()
    {
        let changed = Instant::now();
        set_plan(&app, &root, &a, plan, json!({})).await;
        for gw in [&g1, &g2] {
            loop {
                let (_, _, policy, _) = me(gw, &a, &token_a).await;
                if policy.starts_with(&format!("\"{plan}\"")) {
                    break;
                }
                assert!(
                    changed.elapsed() < Duration::from_secs(5),
                    "round {round}: {plan} not applied after 5 s (still {policy})"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen.push(changed.elapsed());
        }
    }
    seen.sort();
    let worst = *seen.last().expect("samples");
    eprintln!(
        "plan change visible on both replicas: median {:?}, worst {worst:?} ({} samples)",
        seen[seen.len() / 2],
        seen.len()
    );
    assert!(worst <= Duration::from_secs(1), "worst {worst:?}");

    // The monthly quota: exact across both replicas and a restart of one of them.
    let mut ok = 0;
    for i in 0..6 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        ok += usize::from(me(gw, &c, &token_c).await.0 == 200);
    }
    assert_eq!(ok, 6);
    g1.restart().await;
    let mut refused = 0;
    for i in 0..6 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let (status, code, policy, retry) = me(gw, &c, &token_c).await;
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(code, "quota_exceeded");
                assert!(policy.starts_with("\"quota10-monthly\";q=10;"), "{policy}");
                assert!(
                    retry > 0 && retry <= 31 * 86_400,
                    "until the month ends: {retry}"
                );
            }
            s => panic!("unexpected {s} {code}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (10, 2),
        "exactly the quota, across replicas and a restart"
    );
    // The admin listener shows the plan and the month's count (for SREs).
    let (status, _, body) = http_get(
        loopback(g2.admin),
        &format!("127.0.0.1:{}", g2.admin),
        &format!("/api/tenants/{c}/stats"),
        None,
    )
    .await
    .expect("admin listener");
    let stats: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["plan"]["plan"], "quota10", "{stats}");
    assert_eq!(stats["plan"]["monthly_requests"]["used"], 10, "{stats}");
    assert_eq!(stats["plan"]["monthly_requests"]["limit"], 10, "{stats}");

    // A suspended tenant is refused by the gateway itself on both replicas: the refusal is counted
    // there, so no byte of it reached the backend.
    let (status, _, _) = app
        .post(
            &format!("/api/tenants/{b}/suspend"),
            "api.aggios.app",
            Some(&root),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    for gw in [&g1, &g2] {
        let start = Instant::now();
        loop {
            let (status, code, _, _) = me(gw, &b, &token_b).await;
            if status == 403 && code == "tenant_suspended" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still {status} {code}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let m = admin_metrics(gw).await;
        let refusals = counter(
            &m,
            "gateway_quota_refusals_total{reason=\"tenant_suspended\"}",
        );
        assert!(refusals >= 1.0, "refused at the edge: {refusals}");
    }
}

#[tokio::test]
async fn with_redis_down_a_tenant_gets_the_default_plans_limits() {
    let (app, root) =
        app_with_plans(&[("wide", json!({"requests_per_second": 1, "burst": 9}))]).await;
    let (sub, token) = tenant_on(&app, &root, "pd", "wide").await;
    // A Redis of this test's own, to stop.
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let url = format!("redis://127.0.0.1:{port}");
    let gw = start_gateway_with(&app, &url, 1).await;
    let mut ok = 0;
    for _ in 0..10 {
        ok += usize::from(me(&gw, &sub, &token).await.0 == 200);
    }
    assert!(ok >= 10, "the tenant's own plan (capacity 10): {ok}");
    let _ = redis.kill();
    let _ = redis.wait();
    // The policy stays cached; the rate falls back to the default plan's (1/s, burst 1) in process.
    let start = Instant::now();
    let mut allowed = 0;
    let mut refused_by_default = false;
    while start.elapsed() < Duration::from_secs(10) && !refused_by_default {
        allowed = 0;
        for _ in 0..10 {
            let (status, code, _, _) = me(&gw, &sub, &token).await;
            allowed += usize::from(status == 200);
            refused_by_default |= status == 429 && code == "rate_limited";
        }
    }
    assert!(refused_by_default, "never limited after Redis went away");
    assert!(
        allowed <= 3,
        "the default plan's capacity (2, plus a refill): {allowed}"
    );
    let m = admin_metrics(&gw).await;
    assert!(
        m.lines().any(|l| l.starts_with(
            "gateway_ratelimit_decisions_total{decision=\"fallback_refused\",policy=\"plan\"}"
        )),
        "decided by the local fallback"
    );
}

/// The counter `name{labels}` on a gateway's `/metrics` (0 when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Anonymous requests on hosts a client makes up: each unknown tenant costs one lookup, then is cached
/// as absent and gets the default plan; the cache stays bounded.
#[tokio::test]
async fn made_up_tenants_get_the_default_plan_and_are_looked_up_once() {
    let app = TestApp::spawn().await;
    let gw = start_gateway_with(&app, &redis_url(), 50).await;
    let get = |sub: String| {
        let gw = &gw;
        async move {
            let (status, headers, _) = http_get(loopback(gw.port), &host(&sub), "/public/x", None)
                .await
                .expect("gateway");
            let policy = headers
                .get("ratelimit-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (status, policy)
        }
    };
    let names: Vec<String> = (0..200).map(|_| unique("ghost")).collect();
    let before = counter(
        &admin_metrics(&gw).await,
        "gateway_plan_lookups_total{result=\"backend\"}",
    );
    for chunk in names.chunks(25) {
        for (status, policy) in
            futures_util::future::join_all(chunk.iter().cloned().map(&get)).await
        {
            assert_ne!(
                status, 503,
                "a made-up tenant never makes the gateway unavailable"
            );
            assert!(
                policy.starts_with("\"fallback\";q=50;"),
                "the default plan: {policy}"
            );
        }
    }
    let m = admin_metrics(&gw).await;
    let looked_up = counter(&m, "gateway_plan_lookups_total{result=\"backend\"}") - before;
    let failed = counter(&m, "gateway_plan_lookups_total{result=\"error\"}");
    // 25 at a time stays under the 32 lookups a replica runs at once: one lookup per name, no errors.
    assert_eq!((looked_up, failed), (200.0, 0.0));
    // Asked again: answered from the cache (absent), no new lookup. A policy change published by a
    // test running beside this one (same Redis channel) makes in-flight lookups skip the cache: then
    // the pass is repeated until one adds no lookup.
    let mut again = 0.0;
    for _ in 0..5 {
        let lookups = counter(
            &admin_metrics(&gw).await,
            "gateway_plan_lookups_total{result=\"backend\"}",
        );
        for chunk in names.chunks(25) {
            futures_util::future::join_all(chunk.iter().cloned().map(&get)).await;
        }
        let m = admin_metrics(&gw).await;
        again = counter(&m, "gateway_plan_lookups_total{result=\"backend\"}") - lookups;
        // A pass after which a message arrived may leave some names uncached: the next pass
        // caches them. Without caching of absent tenants no pass ever comes out at zero.
        if again == 0.0 {
            break;
        }
    }
    assert_eq!(again, 0.0, "unknown tenants are remembered as absent");
}

/// The backend's policy lookup down: the tenant gets the default plan's limits (never unlimited),
/// counted and logged.
#[tokio::test]
async fn with_the_policy_lookup_down_a_tenant_gets_the_default_plan() {
    let (app, root) = app_with_plans(&[("huge", json!({"requests_per_second": 100000}))]).await;
    let (sub, token) = tenant_on(&app, &root, "pe", "huge").await;
    // Nothing listens there.
    let dead_port = crate::e2e::dead_port();
    let dead = loopback(dead_port.port);
    let gw = start_gateway_asking(&app, dead, &redis_url(), 2).await;
    let mut ok = 0;
    let mut policies = Vec::new();
    for _ in 0..10 {
        let (status, _, policy, _) = me(&gw, &sub, &token).await;
        ok += usize::from(status == 200);
        policies.push(policy);
    }
    assert!(
        policies
            .iter()
            .all(|p| p.starts_with("\"fallback\";q=2;w=1")),
        "{policies:?}"
    );
    assert!(
        (1..=4).contains(&ok),
        "the default plan's capacity (3): {ok}"
    );
    let errors = counter(
        &admin_metrics(&gw).await,
        "gateway_plan_lookups_total{result=\"error\"}",
    );
    assert!(errors >= 1.0, "counted: {errors}");
}
