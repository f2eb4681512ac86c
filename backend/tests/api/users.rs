//! Users and tenants endpoints: roles, validation, conflicts, and cross-tenant invisibility.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn admins_manage_users_members_cannot_and_tenants_stay_apart() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    app.user(acme, "admin@acme.test", "admin").await;
    app.user(acme, "member@acme.test", "member").await;
    let gus = app.user(globex, "gus@globex.test", "admin").await;
    let (admin, _) = app.login("acme.aggios.app", "admin@acme.test").await;
    let (member, _) = app.login("acme.aggios.app", "member@acme.test").await;
    let host = "acme.aggios.app";

    let (status, body, _) = app
        .post(
            "/api/users",
            host,
            Some(&admin),
            json!({ "email": "new@acme.test", "password": "long enough", "first_name": "New" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["user"]["id"].as_str().expect("id").to_string();
    let (status, body, _) = app
        .post(
            "/api/users",
            host,
            Some(&admin),
            json!({ "email": "NEW@acme.test", "password": "long enough" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (409, Some("email")),
        "{body}"
    );
    let (status, body, _) = app
        .post(
            "/api/users",
            host,
            Some(&admin),
            json!({ "email": "x", "password": "short", "role": "god" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["fields"].as_array().map(Vec::len), Some(3));
    let (status, _, _) = app
        .post(
            "/api/users",
            host,
            Some(&admin),
            json!({ "email": "p@acme.test", "password": "long enough", "role": "platform_admin" }),
        )
        .await;
    assert_eq!(status, 422, "a tenant admin cannot mint platform admins");

    let (status, body, _) = app
        .call(
            "PATCH",
            &format!("/api/users/{id}"),
            host,
            Some(&admin),
            Some(json!({ "last_name": "Person", "role": "admin" })),
        )
        .await;
    assert_eq!(
        (
            status,
            body["user"]["last_name"].as_str(),
            body["user"]["role"].as_str()
        ),
        (200, Some("Person"), Some("admin"))
    );
    let (status, body, _) = app.get("/api/users", host, Some(&admin)).await;
    assert_eq!(
        (status, body["users"].as_array().map(Vec::len)),
        (200, Some(3))
    );

    // Members: 403. Another tenant's user id: 404 (invisible, not forbidden).
    let (status, _, _) = app.get("/api/users", host, Some(&member)).await;
    assert_eq!(status, 403);
    for method in ["GET", "DELETE"] {
        let (status, _, _) = app
            .call(
                method,
                &format!("/api/users/{gus}"),
                host,
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, 404, "{method} of another tenant's user");
    }
    let (status, _, _) = app
        .call(
            "PATCH",
            &format!("/api/users/{gus}"),
            host,
            Some(&admin),
            Some(json!({ "first_name": "x" })),
        )
        .await;
    assert_eq!(status, 404);

    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/users/{id}"),
            host,
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = app
        .get(&format!("/api/users/{id}"), host, Some(&admin))
        .await;
    assert_eq!(status, 404);
    let (status, body, _) = app.get("/api/tenant", host, Some(&admin)).await;
    assert_eq!(
        (status, body["tenant"]["subdomain"].as_str()),
        (200, Some("acme"))
    );
    let (status, _, _) = app.get("/api/tenants", host, Some(&admin)).await;
    assert_eq!(status, 403);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action IN ('user_created', 'user_updated', 'user_deleted')")
        .fetch_one(&app.owner_pool)
        .await
        .expect("audit");
    assert_eq!(audit, 3);
}

#[tokio::test]
async fn platform_admins_manage_tenants() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("platform", "root@platform.test", "platform_admin")
        .await;
    let (token, _) = app.login("platform.aggios.app", "root@platform.test").await;
    let host = "api.aggios.app";
    let (status, body, _) = app.post("/api/tenants", host, Some(&token), json!({ "name": "Initech", "subdomain": "initech", "domain": "portal.initech.example" })).await;
    assert_eq!(status, 201, "{body}");
    let (status, body, _) = app
        .post(
            "/api/tenants",
            host,
            Some(&token),
            json!({ "name": "Again", "subdomain": "initech" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (409, Some("subdomain"))
    );
    let (status, _, _) = app
        .post(
            "/api/tenants",
            host,
            Some(&token),
            json!({ "name": "", "subdomain": "Bad_Label" }),
        )
        .await;
    assert_eq!(status, 422);
    let (status, body, _) = app.get("/api/tenants", host, Some(&token)).await;
    assert_eq!(
        (status, body["tenants"].as_array().map(Vec::len)),
        (200, Some(2))
    );
}
