//! API keys, the internal listener, and the read replica's fallback.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn api_keys_are_shown_once_listed_and_revoked() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    app.user(acme, "admin@acme.test", "admin").await;
    app.user(acme, "member@acme.test", "member").await;
    app.user(globex, "admin@globex.test", "admin").await;
    let (admin, _) = app.login("acme.aggios.app", "admin@acme.test").await;
    let (member, _) = app.login("acme.aggios.app", "member@acme.test").await;
    let (gadmin, _) = app.login("globex.aggios.app", "admin@globex.test").await;
    let host = "acme.aggios.app";

    let (status, body, _) = app
        .post(
            "/api/api-keys",
            host,
            Some(&admin),
            json!({ "name": "zapier", "scopes": ["files:read"], "expires_in_days": 30 }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().expect("key").to_string();
    let id = body["api_key"]["id"].as_str().expect("id").to_string();
    let prefix = body["api_key"]["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    assert!(key.starts_with(&format!("ak_{prefix}_")), "{key}");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE prefix = $1")
        .bind(&prefix)
        .fetch_one(&app.owner_pool)
        .await
        .expect("hash");
    assert_eq!(
        stored,
        backend::auth::token_hash(&key),
        "only the hash is stored"
    );

    let (status, body, _) = app.get("/api/api-keys", host, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(body["api_keys"].as_array().map(Vec::len), Some(1));
    assert!(
        !body.to_string().contains(&key),
        "the key is never shown again"
    );

    let (status, body, _) = app
        .post(
            "/api/api-keys",
            host,
            Some(&admin),
            json!({ "name": "x", "scopes": ["root"] }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _, _) = app
        .post("/api/api-keys", host, Some(&member), json!({ "name": "x" }))
        .await;
    assert_eq!(status, 403);
    // The key works for its scopes only, on the endpoints open to integrations.
    let (status, body, _) = app.get("/api/files", host, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = app
        .call("DELETE", "/api/files/a.txt", host, Some(&key), None)
        .await;
    assert_eq!(status, 403, "no files:write scope: {body}");
    let (status, _, _) = app.get("/api/users/me", host, Some(&key)).await;
    assert_eq!(status, 401, "a key is not a user token");
    let mut forged = key.clone();
    forged.pop();
    forged.push(if key.ends_with('0') { '1' } else { '0' });
    let (status, _, _) = app.get("/api/files", host, Some(&forged)).await;
    assert_eq!(status, 401, "right prefix, wrong secret");

    // The gateway's lookup, on the internal listener only.
    let (status, rec) =
        internal_json(app.internal_addr, &format!("/internal/api-keys/{prefix}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["tenant"], "acme");
    assert_eq!(rec["scopes"], json!(["files:read"]));
    assert_eq!(
        rec["key_sha256"].as_str(),
        Some(hex_lower(&backend::auth::token_hash(&key)).as_str())
    );
    assert!(rec["expires_at"].as_i64().is_some());
    let (status, _) = internal_json(app.addr, &format!("/internal/api-keys/{prefix}")).await;
    assert_eq!(status, 404, "not on the public listener");
    let (status, _) = internal_json(app.internal_addr, "/internal/api-keys/00000000").await;
    assert_eq!(status, 404);

    // Revocation drops the gateway's shared cache entry.
    let redis = redis::Client::open(redis_url()).expect("redis");
    let mut rc = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis conn");
    let cache_key = format!("aggios:apikey:{prefix}");
    let _: () = redis::AsyncCommands::set_ex(&mut rc, &cache_key, "{}", 30)
        .await
        .expect("set");

    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/api-keys/{id}"),
            "globex.aggios.app",
            Some(&gadmin),
            None,
        )
        .await;
    assert_eq!(status, 404, "another tenant cannot revoke it");
    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/api-keys/{id}"),
            host,
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let cached: bool = redis::AsyncCommands::exists(&mut rc, &cache_key)
        .await
        .expect("exists");
    assert!(!cached, "the revoked key's cache entry is dropped");
    let (status, _) =
        internal_json(app.internal_addr, &format!("/internal/api-keys/{prefix}")).await;
    assert_eq!(status, 404, "a revoked key is not served to the gateway");
    let (status, body, _) = app.get("/api/files", host, Some(&key)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "api_key_revoked");
    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/api-keys/{id}"),
            host,
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404, "already revoked");
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn internal_json(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "internal")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn internal_get(app: &TestApp, addr: std::net::SocketAddr, path: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let _ = app;
    let req = http::Request::builder()
        .uri(path)
        .header("host", "internal")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    sender
        .send_request(req)
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test]
async fn tenant_domains_are_answered_only_on_the_internal_listener() {
    let app = TestApp::spawn().await;
    app.tenant("acme").await;
    backend::db::tenants::create(&app.owner_pool, "Shop", "shop", Some("portal.shop.example"))
        .await
        .expect("tenant");
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/acme.aggios.app"
        )
        .await,
        200
    );
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/portal.shop.example"
        )
        .await,
        200
    );
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/nobody.aggios.app"
        )
        .await,
        404
    );
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/acme.evil.example"
        )
        .await,
        404
    );
    assert_eq!(
        internal_get(&app, app.addr, "/internal/tenant-domains/acme.aggios.app").await,
        404,
        "not on the public listener"
    );
    sqlx::query("UPDATE tenants SET is_active = false WHERE subdomain = 'acme'")
        .execute(&app.owner_pool)
        .await
        .expect("deactivate");
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/acme.aggios.app"
        )
        .await,
        404,
        "inactive tenants are refused"
    );
}

#[tokio::test]
async fn reads_fall_back_to_the_primary_when_the_replica_is_down() {
    let dead = format!(
        "postgres://nobody@127.0.0.1:{}/none",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port()
    );
    let app = TestApp::spawn_with(None, Some(dead)).await;
    app.tenant_with_user("acme", "admin@acme.test", "admin")
        .await;
    let (admin, _) = app.login("acme.aggios.app", "admin@acme.test").await;
    let (status, body, _) = app.get("/api/users", "acme.aggios.app", Some(&admin)).await;
    assert_eq!(
        (status, body["users"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );
}

/// #23 point 5: tenant-domain asks (whose names clients choose, one per random SNI) have their own small
/// pool: with every one of its connections taken, API-key lookups on the same internal listener are
/// still answered (not 503 after the pool's acquire timeout), and asks wait only for their own pool.
#[tokio::test]
async fn tenant_domain_asks_cannot_take_the_api_key_lookups_connections() {
    let app = TestApp::spawn().await;
    app.tenant("acme").await;
    let size = app.state.db.asks.options().get_max_connections();
    assert!(size <= 2, "the asks' pool is small: {size}");
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(
            app.state
                .db
                .asks
                .acquire()
                .await
                .expect("asks pool connection"),
        );
    }
    let (status, body) = internal_json(app.internal_addr, "/internal/api-keys/00000000").await;
    assert_eq!(status, 404, "the lookup was not answered: {body}");
    drop(held);
    assert_eq!(
        internal_get(
            &app,
            app.internal_addr,
            "/internal/tenant-domains/acme.aggios.app"
        )
        .await,
        200
    );
}
