//! Edge authentication: every attack refused before any upstream connection; valid tokens forwarded
//! with identity headers set by the gateway only; key rotation through a live reload.

use crate::helpers::*;

const OLD: &str = "old-secret-old-secret-old-secret-0001";
const NEW: &str = "new-secret-new-secret-new-secret-0002";

fn config(up: &TestUpstream, keys: &str) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]
reserved = ["api"]

[auth.jwt]
keys = [{keys}]

{}
[[routes]]
name = "tenant-api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "public"
hosts = ["*.aggios.app"]
upstream = "u"
"#,
        upstream_toml("u", &[up], "")
    )
}

const BOTH: &str =
    r#"{ kid = "old", secret_env = "GW_OLD" }, { kid = "new", secret_env = "GW_NEW" }"#;
const ENV: &[(&str, &str)] = &[("GW_OLD", OLD), ("GW_NEW", NEW)];

#[tokio::test]
async fn attacks_are_refused_before_any_upstream_byte() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(&config(&up, BOTH), ENV).await;
    let good = Token::new(NEW, "acme").kid("new").sign();
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "missing_token"),
        ("garbage", Some("garbage".into()), 401, "malformed_token"),
        (
            "empty signature",
            Some(format!("{}.{}.", parts[0], parts[1])),
            401,
            "bad_signature",
        ),
        (
            "wrong secret",
            Some(Token::new(OLD, "acme").kid("new").sign()),
            401,
            "bad_signature",
        ),
        (
            "unknown kid",
            Some(Token::new(NEW, "acme").kid("gone").sign()),
            401,
            "unknown_kid",
        ),
        (
            "other tenant",
            Some(Token::new(NEW, "globex").kid("new").sign()),
            403,
            "tenant_mismatch",
        ),
        (
            "oversize",
            Some(format!("{}.{}.{}", parts[0], "a".repeat(9000), parts[2])),
            401,
            "token_too_large",
        ),
    ];
    for (what, tok, status, code) in cases {
        let auth = tok.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = gw
            .get_with("acme.aggios.app", "/api/users/me", &headers)
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{what}"
        );
        let www = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(www.starts_with("Bearer realm=\"aggios\""), "{what}: {www}");
    }
    assert_eq!(up.hits(), 0, "a refused request reached the upstream");
    assert_eq!(
        gw.metric("gateway_auth_rejections_total{reason=\"tenant_mismatch\",route=\"tenant-api\"}")
            .await,
        1.0
    );
    // Routes without auth stay open.
    assert_eq!(gw.get("acme.aggios.app", "/public").await.status, 200);
}

/// An OAuth access token (`sub`, `client_id`, `scope`, no `user_id`): the upstream is told which client
/// acts and with which scopes, in headers only the gateway sets; a client's own `X-Auth-Client-Id` is
/// dropped, with a user's token too. On a route naming no scopes, an OAuth token is refused.
#[tokio::test]
async fn oauth_tokens_tell_the_upstream_which_client_acts_and_clients_cannot_say_it() {
    let up = TestUpstream::start("u");
    let scoped = format!(
        "{}\n[[routes]]\nname = \"files\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/api/files\"\n\
         auth = \"jwt_tenant\"\nscopes = [\"files:read\"]\nupstream = \"u\"\n",
        config(&up, BOTH)
    );
    let gw = Gateway::start_with_env(&scoped, ENV).await;
    let oauth = Token::new(OLD, "acme")
        .kid("old")
        .claim(contracts::claims::USER_ID, serde_json::Value::Null)
        .claim("sub", "7e57c0de-0000-4000-8000-000000000002".into())
        .claim("client_id", "oc_0123456789abcdef01234567".into())
        .claim("scope", "files:read".into())
        .bearer();
    let user = Token::new(OLD, "acme").kid("old").bearer();
    for (auth, client, scope, user_id) in [
        (
            &oauth,
            vec!["oc_0123456789abcdef01234567"],
            vec!["files:read"],
            "7e57c0de-0000-4000-8000-000000000002",
        ),
        (
            &user,
            vec![],
            vec![],
            "8c3c6a8e-0000-4000-8000-000000000001",
        ),
    ] {
        let r = gw
            .get_with(
                "acme.aggios.app",
                "/api/files/a.txt",
                &[
                    ("authorization", auth),
                    ("x-auth-client-id", "oc_forged"),
                    ("x-auth-scope", "files:write"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let echo = r.json();
        let h = |n: &str| {
            echo["headers"][n]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(h(contracts::headers::OAUTH_CLIENT_ID), client);
        assert_eq!(h(contracts::headers::OAUTH_SCOPE), scope);
        assert_eq!(h("x-user-id"), vec![user_id]);
    }
    // A route that names no scopes is a users' route: an OAuth token is refused there at the edge.
    let hits = up.hits();
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/api/users/me",
            &[("authorization", &oauth)],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "insufficient_scope");
    assert_eq!(up.hits(), hits, "refused before the upstream");
}

#[tokio::test]
async fn valid_tokens_carry_identity_set_by_the_gateway_only() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(&config(&up, BOTH), ENV).await;
    let tok = Token::new(OLD, "acme").kid("old").sign();
    let auth = format!("Bearer {tok}");
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/api/users/me",
            &[
                ("authorization", &auth),
                ("x-user-id", "spoofed"),
                ("x-tenant-id", "globex"),
                ("x-user-role", "platform_admin"),
                ("x-auth-debug", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let echo = r.json();
    let h = |n: &str| {
        echo["headers"][n]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(h("x-user-id"), vec!["8c3c6a8e-0000-4000-8000-000000000001"]);
    assert_eq!(h("x-tenant-id"), vec!["acme"]);
    assert_eq!(h("x-user-role"), vec!["admin"]);
    assert!(h("x-auth-debug").is_empty());
    assert_eq!(
        h("authorization"),
        vec![auth.as_str()],
        "the token is passed on for the backend to verify again"
    );
    // Spoofed identity headers are stripped on unauthenticated routes too.
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/public",
            &[("x-user-id", "spoofed"), ("x-tenant-id", "globex")],
        )
        .await;
    assert!(
        r.json()["headers"].get("x-user-id").is_none()
            && r.json()["headers"].get("x-tenant-id").is_none()
    );
    // The access log carries user and tenant, never the token.
    eventually("access-log line with user and tenant", || {
        let found = gw
            .access_log()
            .iter()
            .any(|l| l["user"] == "8c3c6a8e-0000-4000-8000-000000000001" && l["tenant"] == "acme");
        async move { found }
    })
    .await;
    assert!(!std::fs::read_to_string(gw.dir.path().join("access.log"))
        .unwrap_or_default()
        .contains(&tok));
}

#[tokio::test]
async fn key_rotation_through_a_live_reload() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(&config(&up, BOTH), ENV).await;
    let old = Token::new(OLD, "acme").kid("old").bearer();
    let new = Token::new(NEW, "acme").kid("new").bearer();
    for a in [&old, &new] {
        assert_eq!(
            gw.get_with("acme.aggios.app", "/api/x", &[("authorization", a)])
                .await
                .status,
            200
        );
    }
    // Retire the old key: its tokens stop working, the new ones keep working, nothing restarts.
    gw.rewrite(&config(&up, r#"{ kid = "new", secret_env = "GW_NEW" }"#));
    eventually("old key retired", || async {
        gw.get_with("acme.aggios.app", "/api/x", &[("authorization", &old)])
            .await
            .status
            == 401
    })
    .await;
    assert_eq!(
        gw.get_with("acme.aggios.app", "/api/x", &[("authorization", &new)])
            .await
            .status,
        200
    );
}
