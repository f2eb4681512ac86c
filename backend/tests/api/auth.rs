//! Login, refresh rotation with reuse detection, logout denylist, throttling, timing parity.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn login_me_refresh_rotation_and_reuse_detection() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;

    let (access, refresh) = app.login("acme.aggios.app", "ANN@acme.test").await;
    let (status, me, _) = app
        .get("/api/users/me", "acme.aggios.app", Some(&access))
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], "ann@acme.test");
    assert_eq!(me["tenant"]["subdomain"], "acme");
    assert!(me["user"].get("password_hash").is_none());

    // Rotation: the new pair works, the old refresh token is dead.
    let (status, pair) = app.refresh("acme.aggios.app", &refresh).await;
    assert_eq!(status, 200, "{pair}");
    let new_refresh = pair["refresh_token"].as_str().expect("refresh").to_string();
    assert_ne!(new_refresh, refresh);
    // Reusing the rotated token is theft: 401, and the whole family dies (the new token too).
    let (status, body) = app.refresh("acme.aggios.app", &refresh).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    let (status, body) = app.refresh("acme.aggios.app", &new_refresh).await;
    assert_eq!(status, 401, "{body}");
    // Stored hashed, never in clear.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens WHERE encode(token_hash, 'escape') LIKE 'rt_%'",
    )
    .fetch_one(&app.owner_pool)
    .await
    .expect("count");
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn logout_denylists_the_access_token() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (access, refresh) = app.login("acme.aggios.app", "ann@acme.test").await;
    let (status, _, _) = app
        .post(
            "/api/auth/logout",
            "acme.aggios.app",
            Some(&access),
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(status, 200);
    // The jti stays denylisted past `exp` for as long as any verifier's leeway would accept the token.
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = access.split('.').nth(1).expect("payload");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("claims")
    };
    let mut redis = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!(
            "aggios:denylist:jti:{}",
            claims["jti"].as_str().expect("jti")
        ))
        .query_async(&mut redis)
        .await
        .expect("ttl");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let remaining = claims["exp"].as_i64().expect("exp") - now;
    assert!(
        ttl >= remaining + 120 - 5,
        "denylist entry expires {ttl}s from now, token + leeway {}s",
        remaining + 120
    );
    let (status, body, headers) = app
        .get("/api/users/me", "acme.aggios.app", Some(&access))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    assert_eq!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (status, _) = app.refresh("acme.aggios.app", &refresh).await;
    assert_eq!(status, 401, "logout revokes the refresh family");
}

#[tokio::test]
async fn bad_input_and_wrong_credentials() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    app.tenant("globex").await;
    app.user(acme, "ann@acme.test", "member").await;
    let host = "acme.aggios.app";

    let (status, body, _) = app.try_login(host, "nope", "").await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["email", "password"]);
    assert!(body["error"]["request_id"].is_string());

    let (status, body, _) = app.call("POST", "/api/auth/login", host, None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let wrong = app.try_login(host, "ann@acme.test", "wrong password").await;
    let unknown = app.try_login(host, "who@acme.test", "wrong password").await;
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong.1["error"]["code"], unknown.1["error"]["code"]);
    assert_eq!(wrong.1["error"]["message"], unknown.1["error"]["message"]);

    // A user of acme cannot log in on globex's host.
    let (status, _, _) = app
        .try_login("globex.aggios.app", "ann@acme.test", PASSWORD)
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = app
        .try_login("nobody.aggios.app", "ann@acme.test", PASSWORD)
        .await;
    assert_eq!(status, 404);

    // Tokens: missing, garbage, signed with another key.
    for (token, code) in [
        (None, "missing_token"),
        (Some("garbage"), "invalid_token"),
        (Some("a.b.c"), "invalid_token"),
    ] {
        let (status, body, _) = app.get("/api/users/me", host, token).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some(code)));
    }
    let other = backend::auth::TokenKeys::new(
        b"another-secret-another-secret-another",
        std::time::Duration::from_secs(60),
    );
    let (forged, _) = other
        .issue(uuid::Uuid::new_v4(), "x@y.z", "acme", "admin")
        .expect("issue");
    let (status, _, _) = app.get("/api/users/me", host, Some(&forged)).await;
    assert_eq!(status, 401);

    let (status, _, _) = app.get("/api/nothing", host, None).await;
    assert_eq!(status, 404);
    let (status, _, _) = app
        .call("DELETE", "/api/auth/login", host, None, None)
        .await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let bad = json!({ "email": "ann@acme.test", "password": "wrong password" });
    for _ in 0..5 {
        let (status, _, _) = app
            .post("/api/auth/login", "acme.aggios.app", None, bad.clone())
            .await;
        assert_eq!(status, 401);
    }
    let (status, body, headers) = app
        .try_login("acme.aggios.app", "ann@acme.test", PASSWORD)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    assert!(headers.get("retry-after").is_some());
    let failed: i64 = app.audit_count("login_failed").await;
    assert_eq!(failed, 5);
}

/// Parallel guesses cannot outrun the counter: each attempt is taken before the password is checked.
#[tokio::test]
async fn parallel_wrong_passwords_are_evaluated_at_most_the_limit() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let bad = json!({ "email": "ann@acme.test", "password": "wrong password" });
    let calls = (0..20).map(|_| app.post("/api/auth/login", "acme.aggios.app", None, bad.clone()));
    let results = futures_util::future::join_all(calls).await;
    let evaluated = results.iter().filter(|(s, _, _)| *s == 401).count();
    let refused = results.iter().filter(|(s, _, _)| *s == 429).count();
    assert_eq!(
        evaluated + refused,
        20,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(
        evaluated <= 5,
        "{evaluated} guesses were checked against a limit of 5"
    );
    let failed: i64 = app.audit_count("login_failed").await;
    assert_eq!(failed, evaluated as i64);
}

/// Unknown email and wrong password cost the same (one Argon2id verification each). Compared as a ratio
/// of medians measured in the same run, alternating, so machine load affects both sides alike.
#[tokio::test]
async fn unknown_email_costs_the_same_as_a_wrong_password() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    // Throttling counts per account, so use a fresh account name for each wrong-password try.
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..8 {
        let email = format!("user{i}@acme.test");
        app.user(acme, &email, "member").await;
        let t = std::time::Instant::now();
        let (s, _, _) = app
            .try_login("acme.aggios.app", &email, "not it at all")
            .await;
        wrong.push(t.elapsed().as_secs_f64());
        assert_eq!(s, 401);
        let t = std::time::Instant::now();
        let (s, _, _) = app
            .try_login(
                "acme.aggios.app",
                &format!("ghost{i}@acme.test"),
                "not it at all",
            )
            .await;
        unknown.push(t.elapsed().as_secs_f64());
        assert_eq!(s, 401);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = median(&mut unknown) / median(&mut wrong);
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown/wrong median ratio {ratio:.2}: an attacker could tell them apart"
    );
}

#[tokio::test]
async fn concurrent_logins_in_two_tenants_do_not_cross() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    app.user(acme, "same@x.test", "member").await;
    app.user(globex, "same@x.test", "member").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            let (access, _) = app
                .login(&format!("{tenant}.aggios.app"), "same@x.test")
                .await;
            let (status, me, _) = app
                .get(
                    "/api/users/me",
                    &format!("{tenant}.aggios.app"),
                    Some(&access),
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(me["tenant"]["subdomain"], tenant);
            // Uploads in both tenants at once, same paths: each tenant reads back only its own bytes.
            let host = format!("{tenant}.aggios.app");
            let content = bytes::Bytes::from(format!("{tenant}-{i}"));
            let path = format!("/api/files/shared/{}.txt", i / 2);
            let (status, _, _) = app
                .call_raw(
                    "PUT",
                    &path,
                    &host,
                    Some(&access),
                    "text/plain",
                    content.clone(),
                )
                .await;
            assert_eq!(status, 201);
            let (status, got, _) = app
                .call_raw("GET", &path, &host, Some(&access), "", bytes::Bytes::new())
                .await;
            assert_eq!((status, got), (200, content));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    for tenant in ["acme", "globex"] {
        let (access, _) = app
            .login(&format!("{tenant}.aggios.app"), "same@x.test")
            .await;
        let (_, list, _) = app
            .get(
                "/api/files?prefix=shared",
                &format!("{tenant}.aggios.app"),
                Some(&access),
            )
            .await;
        assert_eq!(
            list["files"].as_array().map(Vec::len),
            Some(10),
            "{tenant}: {list}"
        );
    }
}
