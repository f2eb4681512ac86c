//! OAuth2 at the backend (the authorization server of each tenant host): clients managed by tenant
//! admins, client credentials, the authorization code with PKCE and consent, refresh rotation with
//! reuse detection, revocation, introspection, and the attack table — each refusal the RFC's error code,
//! never a 500, and nothing issued. (Through the real gateway: `e2e::oauth_*`.)

use bytes::Bytes;
use serde_json::{json, Value};

use crate::helpers::*;

pub const HOST: &str = "acme.aggios.app";
pub const REDIRECT: &str = "https://app.example/cb";

/// A form POST to `path` on `host`, with HTTP Basic credentials when given.
pub async fn form(
    app: &TestApp,
    path: &str,
    host: &str,
    basic: Option<(&str, &str)>,
    params: &[(&str, &str)],
) -> (u16, Value, http::HeaderMap) {
    use base64::Engine;
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let auth = basic.map(|(id, secret)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    });
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let (status, bytes, h) = app
        .call_with(
            "POST",
            path,
            host,
            &headers,
            "application/x-www-form-urlencoded",
            Bytes::from(body),
        )
        .await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        h,
    )
}

/// Registers a client as the tenant admin `token`; (client_id, secret).
pub async fn register(
    app: &TestApp,
    host: &str,
    token: &str,
    body: Value,
) -> (String, Option<String>) {
    let (status, created, _) = app
        .post("/api/oauth/clients", host, Some(token), body)
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["client"]["client_id"]
            .as_str()
            .expect("id")
            .to_string(),
        created["client_secret"].as_str().map(str::to_string),
    )
}

/// The decoded header and claims of a JWT.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(&e.decode(parts.next().expect("part")).expect("b64")).expect("json")
    };
    (next(), next())
}

async fn access_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM oauth_access_tokens")
        .fetch_one(&app.owner_pool)
        .await
        .expect("count")
}

async fn admin_of(app: &TestApp, sub: &str) -> String {
    let t = app.tenant(sub).await;
    app.user(t, &format!("admin@{sub}.test"), "admin").await;
    app.login(&format!("{sub}.aggios.app"), &format!("admin@{sub}.test"))
        .await
        .0
}

#[tokio::test]
async fn clients_are_managed_by_tenant_admins_audited_and_their_secrets_shown_once() {
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    let acme = app.tenant("acme2").await;
    let _ = acme;
    let t = app.tenant("beta").await;
    app.user(t, "mo@beta.test", "member").await;
    let (member, _) = app.login("beta.aggios.app", "mo@beta.test").await;
    // Bad registrations name their fields.
    for (body, field) in [
        (
            json!({"name": "x", "grant_types": ["implicit"]}),
            "grant_types",
        ),
        (
            json!({"name": "x", "grant_types": ["authorization_code"], "redirect_uris": ["http://app.example/cb"]}),
            "redirect_uris",
        ),
        (
            json!({"name": "x", "grant_types": ["authorization_code"]}),
            "redirect_uris",
        ),
        (
            json!({"name": "x", "grant_types": ["client_credentials"], "confidential": false}),
            "grant_types",
        ),
        (
            json!({"name": "x", "grant_types": ["client_credentials"], "scopes": ["admin"]}),
            "scopes",
        ),
        (
            json!({"name": "", "grant_types": ["client_credentials"]}),
            "name",
        ),
    ] {
        let (status, err, _) = app
            .post("/api/oauth/clients", HOST, Some(&admin), body.clone())
            .await;
        assert_eq!(status, 422, "{body} -> {err}");
        assert!(
            err["error"]["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .any(|f| f["field"] == field),
            "{body} -> {err}"
        );
    }
    let (status, _, _) = app
        .post(
            "/api/oauth/clients",
            "beta.aggios.app",
            Some(&member),
            json!({"name": "x", "grant_types": ["client_credentials"]}),
        )
        .await;
    assert_eq!(status, 403, "members do not register clients");
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "ERP sync", "grant_types": ["client_credentials"], "scopes": ["files:read"]}),
    )
    .await;
    let secret = secret.expect("a confidential client gets a secret");
    assert!(id.starts_with("oc_") && secret.starts_with("ocs_"));
    let (_, list, _) = app.get("/api/oauth/clients", HOST, Some(&admin)).await;
    let listed = &list["clients"][0];
    assert_eq!(listed["client_id"], id.as_str());
    assert!(
        !list.to_string().contains(&secret) && listed.get("secret_hash").is_none(),
        "{list}"
    );
    let stored: String = sqlx::query_scalar("SELECT secret_hash FROM oauth_clients")
        .fetch_one(&app.owner_pool)
        .await
        .expect("hash");
    assert!(
        stored.starts_with("$argon2id$"),
        "only the Argon2id hash is stored"
    );
    let cc = |s: String| {
        let id = id.clone();
        let app = &app;
        async move {
            form(
                app,
                "/oauth/token",
                HOST,
                Some((&id, &s)),
                &[("grant_type", "client_credentials")],
            )
            .await
        }
    };
    assert_eq!(cc(secret.clone()).await.0, 200);
    // Rotation: the old secret stops at once, the new one works.
    let uuid = listed["id"].as_str().expect("uuid").to_string();
    let (status, rotated, _) = app
        .post(
            &format!("/api/oauth/clients/{uuid}/secret"),
            HOST,
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["client_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert_eq!(cc(secret.clone()).await.1["error"], "invalid_client");
    let (status, issued, _) = cc(new_secret.clone()).await;
    assert_eq!(status, 200);
    let access = issued["access_token"].as_str().expect("token").to_string();
    assert_eq!(app.get("/api/files", HOST, Some(&access)).await.0, 200);
    // Disabled: no token, and the ones issued are refused.
    let (status, _, _) = app
        .call(
            "PATCH",
            &format!("/api/oauth/clients/{uuid}"),
            HOST,
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(cc(new_secret.clone()).await.1["error"], "invalid_client");
    let (status, err, _) = app.get("/api/files", HOST, Some(&access)).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    let (status, _, _) = app
        .call(
            "DELETE",
            &format!("/api/oauth/clients/{uuid}"),
            HOST,
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    for action in [
        "oauth_client_created",
        "oauth_client_secret_rotated",
        "oauth_client_disabled",
        "oauth_client_deleted",
    ] {
        assert_eq!(app.audit_count(action).await, 1, "{action}");
    }
}

/// One row of the attack table: what, the Basic credentials, the form, the status and error code.
type Attack<'a> = (
    &'a str,
    Option<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    u16,
    &'a str,
);

#[tokio::test]
async fn client_credentials_tokens_and_the_attack_table() {
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    let globex_admin = admin_of(&app, "globex").await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "ERP", "grant_types": ["client_credentials"], "scopes": ["files:read", "users:read"]}),
    )
    .await;
    let secret = secret.expect("secret");
    let (g_id, g_secret) = register(
        &app,
        "globex.aggios.app",
        &globex_admin,
        json!({"name": "G", "grant_types": ["client_credentials"], "scopes": ["files:read"]}),
    )
    .await;
    // Basic and body authentication both work.
    let (status, t, headers) = form(
        &app,
        "/oauth/token",
        HOST,
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "files:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        (t["token_type"].as_str(), t["scope"].as_str()),
        (Some("Bearer"), Some("files:read"))
    );
    assert!(
        t.get("refresh_token").is_none(),
        "no refresh token for client credentials"
    );
    let access = t["access_token"].as_str().expect("token");
    let (header, claims) = jwt_parts(access);
    assert_eq!(
        (header["alg"].as_str(), header["typ"].as_str()),
        (Some("EdDSA"), Some("at+jwt"))
    );
    assert_eq!(claims["tenant_id"], "acme");
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["sub"], id.as_str());
    let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert!(lifetime <= 900, "{lifetime}");
    let (status, _, _) = form(
        &app,
        "/oauth/token",
        HOST,
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // The token works where its scope reaches, and only there; on its tenant only.
    assert_eq!(app.get("/api/files", HOST, Some(access)).await.0, 200);
    let (status, err, _) = app
        .call_raw(
            "PUT",
            "/api/files/a.txt",
            HOST,
            Some(access),
            "text/plain",
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&err));
    let (status, _, _) = app.get("/api/users/me", HOST, Some(access)).await;
    assert_eq!(status, 401, "an OAuth token is not a platform session");

    let issued = access_rows(&app).await;
    let basic_wrong = (id.as_str(), "ocs_wrong");
    let cases: Vec<Attack<'_>> = vec![
        (
            "wrong secret",
            Some(basic_wrong),
            vec![("grant_type", "client_credentials")],
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            Some(("oc_000000000000000000000000", "x")),
            vec![("grant_type", "client_credentials")],
            401,
            "invalid_client",
        ),
        (
            "another tenant's client",
            Some((&g_id, g_secret.as_deref().expect("s"))),
            vec![("grant_type", "client_credentials")],
            401,
            "invalid_client",
        ),
        (
            "no client",
            None,
            vec![("grant_type", "client_credentials")],
            401,
            "invalid_client",
        ),
        (
            "unknown scope",
            Some((&id, &secret)),
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "files:read admin"),
            ],
            400,
            "invalid_scope",
        ),
        (
            "scope not allowed",
            Some((&id, &secret)),
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "files:write"),
            ],
            400,
            "invalid_scope",
        ),
        (
            "grant not allowed",
            Some((&id, &secret)),
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("code_verifier", "y"),
                ("redirect_uri", REDIRECT),
            ],
            400,
            "unauthorized_client",
        ),
        (
            "unknown grant",
            Some((&id, &secret)),
            vec![("grant_type", "password")],
            400,
            "unsupported_grant_type",
        ),
        (
            "no grant",
            Some((&id, &secret)),
            vec![],
            400,
            "invalid_request",
        ),
        (
            "parameter twice",
            Some((&id, &secret)),
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "files:read"),
                ("scope", "users:read"),
            ],
            400,
            "invalid_request",
        ),
        (
            "Basic and body secret",
            Some((&id, &secret)),
            vec![("grant_type", "client_credentials"), ("client_secret", "x")],
            400,
            "invalid_request",
        ),
    ];
    for (what, basic, params, status, code) in cases {
        let (got, body, headers) = form(&app, "/oauth/token", HOST, basic, &params).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        if got == 401 && basic.is_some() {
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Basic"),
                "{what}"
            );
        }
    }
    // A JSON body is not a token request.
    let (status, body, _) = app
        .post(
            "/oauth/token",
            HOST,
            None,
            json!({"grant_type": "client_credentials"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(
        access_rows(&app).await,
        issued,
        "nothing issued by a refused request"
    );
    // Metadata and keys.
    let (status, meta, _) = app
        .get("/.well-known/oauth-authorization-server", HOST, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert!(meta["token_endpoint"]
        .as_str()
        .expect("url")
        .ends_with("acme.aggios.app/oauth/token"));
    let (_, jwks, _) = app.get("/.well-known/jwks.json", HOST, None).await;
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
}

/// The per-address and per-client limits of the token endpoint: 429 with `Retry-After`, before any
/// secret is hashed.
#[tokio::test]
async fn the_token_endpoint_is_rate_limited_per_address_and_per_client() {
    let app = TestApp::spawn_with_oauth(backend::config::OAuthConfig {
        token_rate_per_ip: 5,
        token_rate_per_client: 3,
        ..Default::default()
    })
    .await;
    let admin = admin_of(&app, "acme").await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "E", "grant_types": ["client_credentials"]}),
    )
    .await;
    let secret = secret.expect("secret");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            form(
                &app,
                "/oauth/token",
                HOST,
                Some((&id, &secret)),
                &[("grant_type", "client_credentials")],
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429], "per client");
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            form(
                &app,
                "/oauth/token",
                HOST,
                Some(("oc_unknown", "x")),
                &[("grant_type", "client_credentials")],
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses, vec![401, 429], "per address (5 in the minute)");
    let (status, body, headers) = form(&app, "/oauth/token", HOST, None, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_requests"))
    );
    assert!(headers.contains_key("retry-after"));
}

/// `(verifier, challenge)` of RFC 7636 appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The authorization request's query.
pub fn authz_query(client_id: &str, extra: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "files:read")
        .append_pair("state", "st-42")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Approves `client_id` as `email` on the consent page; the Location the user is sent to.
async fn approve(app: &TestApp, client_id: &str, email: &str, password: &str) -> (u16, String) {
    let mut params: Vec<(String, String)> =
        url::form_urlencoded::parse(authz_query(client_id, &[]).as_bytes())
            .into_owned()
            .collect();
    params.push(("email".into(), email.into()));
    params.push(("password".into(), password.into()));
    params.push(("decision".into(), "approve".into()));
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, _, headers) = form(app, "/oauth/authorize", HOST, None, &refs).await;
    let location = headers
        .get("location")
        .map(|l| l.to_str().expect("ascii").to_string())
        .unwrap_or_default();
    (status, location)
}

fn param(location: &str, name: &str) -> Option<String> {
    url::Url::parse(location)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn code_for(app: &TestApp, client_id: &str) -> String {
    let (status, location) = approve(app, client_id, "ann@acme.test", PASSWORD).await;
    assert_eq!(status, 303, "{location}");
    assert_eq!(param(&location, "state").as_deref(), Some("st-42"));
    assert_eq!(
        param(&location, "iss").as_deref(),
        Some("https://acme.aggios.app")
    );
    param(&location, "code").expect("code")
}

async fn exchange(
    app: &TestApp,
    client: (&str, &str),
    code: &str,
    verifier: &str,
    redirect: &str,
) -> (u16, Value) {
    let (s, b, _) = form(
        app,
        "/oauth/token",
        HOST,
        Some(client),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", redirect),
        ],
    )
    .await;
    (s, b)
}

#[tokio::test]
async fn the_authorization_code_flow_with_pkce_consent_refresh_rotation_and_reuse_detection() {
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    let acme: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE subdomain = 'acme'")
        .fetch_one(&app.owner_pool)
        .await
        .expect("tenant");
    app.user(acme, "ann@acme.test", "member").await;
    let globex = app.tenant("globex").await;
    app.user(globex, "gus@globex.test", "admin").await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "Market <App>", "grant_types": ["authorization_code", "refresh_token"], "scopes": ["files:read"], "redirect_uris": [REDIRECT]}),
    )
    .await;
    let secret = secret.expect("secret");
    let client = (id.as_str(), secret.as_str());

    // The consent page: the client and its scopes, escaped; no framing, not cached.
    let (status, page, headers) = app
        .call_raw(
            "GET",
            &format!("/oauth/authorize?{}", authz_query(&id, &[])),
            HOST,
            None,
            "",
            Bytes::new(),
        )
        .await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Market &lt;App&gt;") && page.contains("files:read"),
        "{page}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers["content-security-policy"]
        .to_str()
        .expect("csp")
        .contains("frame-ancestors 'none'"));
    // Before the redirect URI is trusted, errors stay on our page; after, they go back to the client.
    for (what, query, redirects_with) in [
        (
            "unregistered redirect",
            authz_query(&id, &[]).replace("app.example", "evil.example"),
            None,
        ),
        ("unknown client", authz_query("oc_nobody", &[]), None),
        (
            "no PKCE",
            authz_query(&id, &[]).replace("code_challenge=", "x="),
            Some("invalid_request"),
        ),
        (
            "plain PKCE",
            authz_query(&id, &[]).replace("S256", "plain"),
            Some("invalid_request"),
        ),
        (
            "unknown scope",
            authz_query(&id, &[]).replace("scope=files%3Aread", "scope=admin"),
            Some("invalid_scope"),
        ),
        (
            "token response",
            authz_query(&id, &[]).replace("response_type=code", "response_type=token"),
            Some("unsupported_response_type"),
        ),
    ] {
        let (status, _, headers) = app
            .call_raw(
                "GET",
                &format!("/oauth/authorize?{query}"),
                HOST,
                None,
                "",
                Bytes::new(),
            )
            .await;
        match redirects_with {
            None => {
                assert_eq!(status, 400, "{what}");
                assert!(
                    !headers.contains_key("location"),
                    "{what}: never redirected"
                );
            }
            Some(code) => {
                assert_eq!(status, 303, "{what}");
                let to = headers["location"].to_str().expect("ascii");
                assert!(to.starts_with(REDIRECT), "{what}: {to}");
                assert_eq!(param(to, "error").as_deref(), Some(code), "{what}");
                assert_eq!(param(to, "state").as_deref(), Some("st-42"), "{what}");
            }
        }
    }
    // A wrong password, or a user of another tenant: the page again, no code.
    for (email, password) in [
        ("ann@acme.test", "wrong password"),
        ("gus@globex.test", PASSWORD),
    ] {
        let (status, location) = approve(&app, &id, email, password).await;
        assert_eq!((status, location.as_str()), (401, ""), "{email}");
    }
    // Denied: back with access_denied.
    let mut deny: Vec<(String, String)> =
        url::form_urlencoded::parse(authz_query(&id, &[]).as_bytes())
            .into_owned()
            .collect();
    deny.push(("decision".into(), "deny".into()));
    let refs: Vec<(&str, &str)> = deny.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_, _, headers) = form(&app, "/oauth/authorize", HOST, None, &refs).await;
    assert_eq!(
        param(headers["location"].to_str().expect("ascii"), "error").as_deref(),
        Some("access_denied")
    );

    let issued = access_rows(&app).await;
    // A wrong verifier burns the code: the right one is refused afterwards.
    let code = code_for(&app, &id).await;
    let wrong = "A".repeat(43);
    assert_eq!(
        exchange(&app, client, &code, &wrong, REDIRECT).await.1["error"],
        "invalid_grant"
    );
    assert_eq!(
        exchange(&app, client, &code, VERIFIER, REDIRECT).await.1["error"],
        "invalid_grant"
    );
    let code = code_for(&app, &id).await;
    assert_eq!(
        exchange(&app, client, &code, VERIFIER, "https://app.example/other")
            .await
            .1["error"],
        "invalid_grant"
    );
    let code = code_for(&app, &id).await;
    sqlx::query(
        "UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(&app.owner_pool)
    .await
    .expect("expire");
    let (status, body) = exchange(&app, client, &code, VERIFIER, REDIRECT).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "expired: {body}"
    );
    assert_eq!(
        access_rows(&app).await,
        issued,
        "nothing issued by a refused exchange"
    );

    // The exchange: tokens for ann, with the consented scope.
    let code = code_for(&app, &id).await;
    let (status, pair) = exchange(&app, client, &code, VERIFIER, REDIRECT).await;
    assert_eq!(status, 200, "{pair}");
    let access = pair["access_token"].as_str().expect("access").to_string();
    let (_, claims) = jwt_parts(&access);
    let ann: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'ann@acme.test'")
        .fetch_one(&app.owner_pool)
        .await
        .expect("ann");
    assert_eq!(claims["sub"], ann.to_string().as_str());
    assert_eq!(claims["scope"], "files:read");
    assert_eq!(app.get("/api/files", HOST, Some(&access)).await.0, 200);
    // The same code again: refused, and what it issued is revoked.
    assert_eq!(
        exchange(&app, client, &code, VERIFIER, REDIRECT).await.1["error"],
        "invalid_grant"
    );
    let (status, err, _) = app.get("/api/files", HOST, Some(&access)).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    let refresh = pair["refresh_token"].as_str().expect("refresh");
    let refresh_form = |t: &str| {
        let t = t.to_string();
        let app = &app;
        async move {
            form(
                app,
                "/oauth/token",
                HOST,
                Some(client),
                &[("grant_type", "refresh_token"), ("refresh_token", &t)],
            )
            .await
        }
    };
    assert_eq!(
        refresh_form(refresh).await.1["error"],
        "invalid_grant",
        "the replayed code's refresh token is revoked too"
    );

    // Refresh rotation; the old refresh token presented again revokes the family.
    let code = code_for(&app, &id).await;
    let (_, pair) = exchange(&app, client, &code, VERIFIER, REDIRECT).await;
    let r1 = pair["refresh_token"].as_str().expect("refresh").to_string();
    let (status, rotated, _) = refresh_form(&r1).await;
    assert_eq!(status, 200, "{rotated}");
    let r2 = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    assert_ne!(r1, r2);
    let a2 = rotated["access_token"]
        .as_str()
        .expect("access")
        .to_string();
    assert_eq!(app.get("/api/files", HOST, Some(&a2)).await.0, 200);
    let (status, reuse, _) = refresh_form(&r1).await;
    assert_eq!(
        (status, reuse["error"].as_str()),
        (400, Some("invalid_grant")),
        "{reuse}"
    );
    assert_eq!(
        refresh_form(&r2).await.1["error"],
        "invalid_grant",
        "the family is revoked"
    );
    assert_eq!(app.get("/api/files", HOST, Some(&a2)).await.0, 401);
    assert_eq!(app.audit_count("oauth_refresh_reused").await, 1);
    // The burnt code presented again, and the exchanged one presented twice.
    assert_eq!(app.audit_count("oauth_code_reused").await, 2);

    // The admin's list of consents; revoking one revokes what was issued under it.
    let code = code_for(&app, &id).await;
    let (_, pair) = exchange(&app, client, &code, VERIFIER, REDIRECT).await;
    let a3 = pair["access_token"].as_str().expect("access").to_string();
    let (_, consents, _) = app.get("/api/oauth/consents", HOST, Some(&admin)).await;
    let consent = &consents["consents"][0];
    assert_eq!(consent["user_email"], "ann@acme.test");
    assert_eq!(consent["client_id"], id.as_str());
    let (status, _, _) = app
        .call(
            "DELETE",
            &format!(
                "/api/oauth/consents/{}",
                consent["id"].as_str().expect("id")
            ),
            HOST,
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/api/files", HOST, Some(&a3)).await.0, 401);
    assert_eq!(
        refresh_form(pair["refresh_token"].as_str().expect("r"))
            .await
            .1["error"],
        "invalid_grant"
    );
    // globex's admin sees none of acme's consents.
    let (gt, _) = app.login("globex.aggios.app", "gus@globex.test").await;
    let (_, none, _) = app
        .get("/api/oauth/consents", "globex.aggios.app", Some(&gt))
        .await;
    assert_eq!(none["consents"], json!([]));
}

#[tokio::test]
async fn revocation_and_introspection() {
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    let globex_admin = admin_of(&app, "globex").await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "E", "grant_types": ["client_credentials"], "scopes": ["files:read"]}),
    )
    .await;
    let secret = secret.expect("secret");
    let (other, other_secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "F", "grant_types": ["client_credentials"], "scopes": ["files:read"]}),
    )
    .await;
    let other_secret = other_secret.expect("secret");
    let (public, _) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "P", "confidential": false, "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT]}),
    )
    .await;
    let (g, g_secret) = register(
        &app,
        "globex.aggios.app",
        &globex_admin,
        json!({"name": "G", "grant_types": ["client_credentials"]}),
    )
    .await;
    let (_, t, _) = form(
        &app,
        "/oauth/token",
        HOST,
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let access = t["access_token"].as_str().expect("token").to_string();
    let introspect = |client: (String, Option<String>), host: &'static str| {
        let access = access.clone();
        let app = &app;
        async move {
            let mut params = vec![("token", access.as_str()), ("client_id", client.0.as_str())];
            if let Some(s) = client.1.as_deref() {
                params.push(("client_secret", s));
            }
            form(app, "/oauth/introspect", host, None, &params).await
        }
    };
    let (status, info, _) = introspect((other.clone(), Some(other_secret.clone())), HOST).await;
    assert_eq!(status, 200);
    assert_eq!(
        (info["active"].as_bool(), info["client_id"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    assert_eq!(info["scope"], "files:read");
    let (status, err, _) = introspect((public.clone(), None), HOST).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("invalid_client")),
        "public clients do not introspect"
    );
    let (_, foreign, _) = introspect((g.clone(), g_secret.clone()), "globex.aggios.app").await;
    assert_eq!(
        foreign,
        json!({"active": false}),
        "another tenant's token is not active there"
    );
    // Another client cannot revoke it; its own can.
    let (status, _, _) = form(
        &app,
        "/oauth/revoke",
        HOST,
        Some((&other, &other_secret)),
        &[("token", &access)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.get("/api/files", HOST, Some(&access)).await.0,
        200,
        "not revoked by another client"
    );
    let (status, _, _) = form(
        &app,
        "/oauth/revoke",
        HOST,
        Some((&id, &secret)),
        &[("token", &access)],
    )
    .await;
    assert_eq!(status, 200);
    let (status, err, _) = app.get("/api/files", HOST, Some(&access)).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    assert_eq!(
        introspect((other, Some(other_secret)), HOST).await.1,
        json!({"active": false})
    );
    // Unknown tokens: 200, nothing happens.
    let (status, _, _) = form(
        &app,
        "/oauth/revoke",
        HOST,
        Some((&id, &secret)),
        &[("token", "ort_nothing")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, err, _) = form(
        &app,
        "/oauth/revoke",
        HOST,
        Some((&id, "bad")),
        &[("token", "x")],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

/// A third party's whole life at the edge, through the real gateway: its client-credentials token and
/// a user's consented token reach a scoped route; the scope, the tenant binding and the revocations are
/// enforced by the gateway (its own error codes: the backend never sees those requests); the signing
/// key rotates with tokens of both keys accepted during the overlap, and the retired key's tokens are
/// refused after it.
#[tokio::test]
async fn oauth_at_the_edge_scopes_tenants_revocation_and_key_rotation() {
    use crate::e2e::*;
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    app.tenant("globex").await;
    let acme: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE subdomain = 'acme'")
        .fetch_one(&app.owner_pool)
        .await
        .expect("tenant");
    app.user(acme, "ann@acme.test", "member").await;
    let backend = app.addr;
    let gw = start_gateway_with(
        app.addr,
        app.internal_addr,
        &format!("jwks_url = \"http://{backend}/.well-known/jwks.json\"\njwks_refresh = \"1s\""),
        r#"
[[routes]]
name = "oauth"
hosts = ["*.aggios.app"]
path_prefix = "/oauth"
upstream = "backend"

[[routes]]
name = "files-write"
hosts = ["*.aggios.app"]
path_prefix = "/api/files/"
methods = ["PUT", "DELETE"]
auth = "jwt_tenant"
scopes = ["files:write"]
upstream = "backend"
"#,
    )
    .await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "ERP", "grant_types": ["client_credentials", "authorization_code", "refresh_token"],
               "scopes": ["files:read"], "redirect_uris": [REDIRECT]}),
    )
    .await;
    let secret = secret.expect("secret");
    let token_at_edge = || async {
        let body = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
        let (status, t) = edge_form(&gw, HOST, "/oauth/token", &body).await;
        assert_eq!(status, 200, "{t}");
        t["access_token"].as_str().expect("token").to_string()
    };
    // The JWKS is fetched once a second: the first key may be new to the gateway.
    let t1 = token_at_edge().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = get_at_edge(&gw, HOST, "/api/files", &t1).await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Refused at the edge: the scope (files:write not granted), the tenant.
    let (status, body) = via_gateway(
        &gw,
        "PUT",
        HOST,
        "/api/files/a.txt",
        Some(&t1),
        Some(json!("x")),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    // What reached the backend, counted by this test's own gateway (the backend's metrics are
    // shared by every test app of this process): a response head counts before the client has it.
    let before = gw.backend_requests().await;
    let (status, body) = get_at_edge(&gw, "globex.aggios.app", "/api/files", &t1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_mismatch")),
        "{body}"
    );
    assert_eq!(
        gw.backend_requests().await,
        before,
        "the backend never saw the other tenant's request"
    );
    assert_eq!(get_at_edge(&gw, HOST, "/api/files", &t1).await.0, 200);
    assert_eq!(
        gw.backend_requests().await,
        before + 1.0,
        "the count moves with what the backend sees"
    );

    // Key rotation: the new key is published 8 s before it signs (the backend re-reads keys every 5 s,
    // the gateway its JWKS every second).
    let (h1, _) = jwt_parts(&t1);
    let old_kid = h1["kid"].as_str().expect("kid").to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(args)
            .env("DATABASE_URL", app_url(&app.db_name))
            .output()
            .expect("backend cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    let new_kid = cli(&["oauth-key", "rotate", "--publish-ahead", "8"])["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let t2 = loop {
        let t = token_at_edge().await;
        if jwt_parts(&t).0["kid"] == new_kid.as_str() {
            break t;
        }
        // Until then, tokens of the old key.
        assert_eq!(jwt_parts(&t).0["kid"], old_kid.as_str());
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never signed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    // The overlap: both accepted at once (the new key was published before its first token).
    assert_eq!(get_at_edge(&gw, HOST, "/api/files", &t2).await.0, 200);
    assert_eq!(get_at_edge(&gw, HOST, "/api/files", &t1).await.0, 200);
    // The old key retired: its tokens are refused at the edge, the new key's are not.
    cli(&["oauth-key", "retire", &old_kid]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // The backend (which reads the key set itself) may refuse it a moment before the gateway's next
        // JWKS refresh: `invalid_token` from behind the edge, then `unknown_kid` at the edge.
        let (status, body) = get_at_edge(&gw, HOST, "/api/files", &t1).await;
        assert!(status == 200 || status == 401, "{status} {body}");
        if body["error"]["code"] == "unknown_kid" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retired key's token still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(get_at_edge(&gw, HOST, "/api/files", &t2).await.0, 200);

    // A user's consent through the gateway; revoked by the admin: the app is stopped at the edge.
    let code = code_for(&app, &id).await;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", REDIRECT),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .finish();
    let (status, pair) = edge_form(&gw, HOST, "/oauth/token", &body).await;
    assert_eq!(status, 200, "{pair}");
    let user_token = pair["access_token"].as_str().expect("token").to_string();
    assert_eq!(
        get_at_edge(&gw, HOST, "/api/files", &user_token).await.0,
        200
    );
    let (_, consents) = get_at_edge(&gw, HOST, "/api/oauth/consents", &admin).await;
    let consent = consents["consents"][0]["id"]
        .as_str()
        .expect("consent")
        .to_string();
    let (status, _) = via_gateway(
        &gw,
        "DELETE",
        HOST,
        &format!("/api/oauth/consents/{consent}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The backend refuses the revoked token too (same code): the edge is shown to refuse it by the
    // gateway's count of requests the backend answered, which must not move.
    loop {
        let seen = gw.backend_requests().await;
        let (status, body) = get_at_edge(&gw, HOST, "/api/files", &user_token).await;
        if status == 401 && gw.backend_requests().await == seen {
            assert_eq!(body["error"]["code"], "token_revoked", "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked consent's token still reached the backend: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The Python interpreter with Authlib (`OAUTH_PYTHON`, which `scripts/test.sh` exports; else the
/// tools venv it installs into).
fn oauth_python() -> String {
    std::env::var("OAUTH_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/aggios-edge/tools/bin/python")
    })
}

/// A real OAuth2 client library as the third party (Authlib, `tests/oauth/third_party.py`): both
/// flows through the gateway, each token on a scoped route, the code flow's refresh rotated and its
/// grant revoked.
#[tokio::test]
async fn a_real_oauth_client_library_runs_both_flows_through_the_gateway() {
    use crate::e2e::*;
    let app = TestApp::spawn().await;
    let admin = admin_of(&app, "acme").await;
    let acme: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE subdomain = 'acme'")
        .fetch_one(&app.owner_pool)
        .await
        .expect("tenant");
    app.user(acme, "ann@acme.test", "member").await;
    let backend = app.addr;
    let gw = start_gateway_with(
        app.addr,
        app.internal_addr,
        &format!("jwks_url = \"http://{backend}/.well-known/jwks.json\"\njwks_refresh = \"1s\""),
        "[[routes]]\nname = \"oauth\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/oauth\"\nupstream = \"backend\"\n",
    )
    .await;
    let (id, secret) = register(
        &app,
        HOST,
        &admin,
        json!({"name": "Marketplace app", "grant_types": ["client_credentials", "authorization_code", "refresh_token"],
               "scopes": ["files:read"], "redirect_uris": [REDIRECT]}),
    )
    .await;
    // The gateway holds the signing key once its JWKS refresh has run.
    let (_, t, _) = form(
        &app,
        "/oauth/token",
        HOST,
        Some((&id, secret.as_deref().expect("s"))),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let probe = t["access_token"].as_str().expect("token").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get_at_edge(&gw, HOST, "/api/files", &probe).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never accepted an OAuth token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth/third_party.py");
    let python = oauth_python();
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GATEWAY", format!("http://127.0.0.1:{}", gw.port))
        .env("HOST", HOST)
        .env("CLIENT_ID", &id)
        .env("CLIENT_SECRET", secret.as_deref().expect("secret"))
        .env("REDIRECT_URI", REDIRECT)
        .env("USER_EMAIL", "ann@acme.test")
        .env("USER_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (scripts/test.sh installs Authlib: ensure_py_tools)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON line");
    assert_eq!(
        seen,
        json!({
            "cc_scope": "files:read", "cc_files": 200,
            "code_scope": "files:read", "code_has_refresh": true, "code_files": 200,
            "refresh_rotated": true, "refreshed_files": 200,
            "revoke_status": 200, "refresh_after_revoke": "invalid_grant",
        })
    );
    assert_eq!(app.audit_count("oauth_consent_granted").await, 1);
    assert_eq!(app.audit_count("oauth_token_revoked").await, 1);
}
