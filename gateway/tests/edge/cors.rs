//! CORS preflights answered at the edge; CORS and security headers on proxied responses.

use crate::helpers::*;

fn config(up: &TestUpstream) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[auth.jwt]
secret_env = "GW_SECRET"

{}
[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
methods = ["GET", "POST"]
auth = "jwt_tenant"
upstream = "u"
cors = {{ origins = ["https://app.example.com", "https://*.partners.test", "self"], methods = ["GET", "POST"], headers = ["Authorization", "Content-Type"], credentials = true, max_age = 300 }}

[[routes]]
name = "public"
hosts = ["*.aggios.app"]
upstream = "u"
cors = {{ origins = ["self"] }}
security_headers = {{ frame_options = "DENY", referrer_policy = "no-referrer" }}
"#,
        upstream_toml("u", &[up], "")
    )
}

#[tokio::test]
async fn preflights_are_answered_at_the_edge() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &config(&up),
        &[("GW_SECRET", "cors-test-secret-cors-test-secret-01")],
    )
    .await;
    let pre = |origin: &'static str, method: &'static str, headers: &'static str| {
        let gw = &gw;
        async move {
            gw.request(
                "OPTIONS",
                "acme.aggios.app",
                "/api/users",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", headers),
                ],
                bytes::Bytes::new(),
            )
            .await
        }
    };
    for origin in [
        "https://app.example.com",
        "https://crm.partners.test",
        "https://acme.aggios.app",
    ] {
        let r = pre(origin, "POST", "authorization, content-type").await;
        assert_eq!(r.status, 204, "{origin}: {:?}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("300"));
        assert!(r
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")));
    }
    for (origin, method, headers) in [
        ("https://evil.example", "POST", "authorization"),
        ("https://a.b.partners.test", "GET", ""),
        ("https://globex.aggios.app", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let r = pre(origin, method, headers).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "cors_denied"),
            "{origin} {method} {headers}"
        );
        assert!(r.header("access-control-allow-origin").is_none());
    }
    assert_eq!(up.hits(), 0, "preflights must not reach the backend");
}

#[tokio::test]
async fn actual_responses_carry_cors_and_security_headers() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &config(&up),
        &[("GW_SECRET", "cors-test-secret-cors-test-secret-01")],
    )
    .await;
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/page",
            &[("origin", "https://acme.aggios.app")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://acme.aggios.app")
    );
    assert!(r
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("Origin"))));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(
        r.header("strict-transport-security").is_none(),
        "HSTS is for HTTPS responses only"
    );
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/page",
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}
